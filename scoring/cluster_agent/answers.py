"""The judge's answers: the JSON schemas each phase asks for (bounded, so structured decoding always
closes the object within `max_tokens`) and the strict parsers that validate and repair them."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

import numpy as np


class InvalidAnswer(ValueError):
    pass


# ------------------------------------------------------------------ configuration and data


def _str(max_chars: int = 200, min_chars: int = 0) -> dict:
    # Bounded strings keep every answer inside max_tokens: a small judge otherwise rambles and
    # the JSON is cut off, which costs a retry (the grammar enforces the bound while decoding).
    return {"type": "string", "maxLength": max_chars, **({"minLength": min_chars} if min_chars else {})}


def generation_schema() -> dict:
    item = {"type": "object", "properties": {"name": _str(60, 3), "definition": _str(160, 10)},
            "required": ["name", "definition"], "additionalProperties": False}
    metric = {"type": "object", "properties": {"name": _str(60, 3), "definition": _str(160, 10),
                                               "rubric": _str(200, 10)},
              "required": ["name", "definition", "rubric"], "additionalProperties": False}
    return {"type": "object", "properties": {
        "metadata": {"type": "array", "items": item, "minItems": 3, "maxItems": 5},
        "metrics": {"type": "array", "items": metric, "minItems": 3, "maxItems": 5}},
        "required": ["metadata", "metrics"], "additionalProperties": False}


def summary_schema(k: int) -> dict:
    item = {"type": "object", "properties": {"name": _str(60, 3), "definition": _str(200, 10)},
            "required": ["name", "definition"], "additionalProperties": False}
    return {"type": "object", "properties": {"items": {"type": "array", "items": item, "minItems": k,
                                                       "maxItems": k}},
            "required": ["items"], "additionalProperties": False}


def sentences_schema(n: int) -> dict:
    item = {"type": "object", "properties": {"name": _str(60, 3), "criterion": _str(240, 10)},
            "required": ["name", "criterion"], "additionalProperties": False}
    return {"type": "object", "properties": {"criteria": {"type": "array", "items": item, "minItems": n,
                                                          "maxItems": n}},
            "required": ["criteria"], "additionalProperties": False}


def cluster_schema(K: int, n_metrics: int = 0) -> dict:
    label = {"type": "integer", "minimum": 1, "maximum": K}
    scores = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}}
    if n_metrics:
        scores.update(minItems=n_metrics, maxItems=n_metrics)
    cl = {"type": "object", "properties": {"cluster": label, "uniqueness_reasoning": _str(160),
                                           "metadata": _str(80), "metric_scores": scores},
          "required": ["cluster", "uniqueness_reasoning", "metadata", "metric_scores"],
          "additionalProperties": False}
    return {"type": "object", "properties": {
        "analysis": _str(400),
        "assignment": {"type": "array", "items": label, "minItems": K, "maxItems": K},
        "clusters": {"type": "array", "items": cl, "minItems": 1, "maxItems": K}},
        "required": ["analysis", "assignment", "clusters"], "additionalProperties": False}


def verify_schema(n: int) -> dict:
    v = {"type": "object", "properties": {"cluster": {"type": "integer"}, "reasoning": _str(),
                                          "valid": {"type": "integer", "enum": [0, 1]}},
         "required": ["cluster", "reasoning", "valid"], "additionalProperties": False}
    return {"type": "object", "properties": {"verdicts": {"type": "array", "items": v, "minItems": n,
                                                          "maxItems": n}},
            "required": ["verdicts"], "additionalProperties": False}


# ------------------------------------------------------------------ parsing and validation

def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        m = re.search(r"\{.*\}", text or "", re.S)
        if m:
            try:
                return json.loads(m.group(0))
            except json.JSONDecodeError:
                pass
    raise InvalidAnswer("not JSON")


def canonicalize(labels: Sequence[int]) -> list[int]:
    """Relabel clusters in order of first appearance: [5, 2, 5, 7] -> [1, 2, 1, 3]."""
    m: dict[int, int] = {}
    return [m.setdefault(x, len(m) + 1) for x in labels]


def _as_int(x: Any) -> int:
    if isinstance(x, bool):
        raise InvalidAnswer("boolean label")
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x.strip())
    raise InvalidAnswer(f"label {x!r} is not an integer")


def parse_clustering(obj: Any, K: int) -> tuple[list[int], dict[int, str], list[str]]:
    """Validate a clustering answer: (canonical labels, reasoning per canonical cluster, repairs).

    Raises InvalidAnswer when the answer cannot be turned into a partition of the K samples.
    """
    if not isinstance(obj, dict):
        raise InvalidAnswer("answer is not an object")
    repairs: list[str] = []
    raw_reason: dict[int, str] = {}
    created: set[int] = set()  # singleton labels made for missing indices (no description expected)
    if "assignment" in obj:
        a = obj["assignment"]
        if not isinstance(a, list) or len(a) != K:
            raise InvalidAnswer(f"assignment must list exactly {K} labels")
        raw = []
        for x in a:
            if not isinstance(x, int) or isinstance(x, bool):
                repairs.append("coerced_label")
            raw.append(_as_int(x))
        if any(not 1 <= x <= K for x in raw):
            repairs.append("label_out_of_range")
        for c in obj.get("clusters") or []:
            if isinstance(c, dict):
                try:
                    raw_reason[_as_int(c.get("cluster"))] = str(c.get("uniqueness_reasoning") or "")
                except InvalidAnswer:
                    repairs.append("bad_cluster_entry")
    elif isinstance(obj.get("clusters"), list):  # the paper's shape: clusters with sample indices
        raw = [0] * K
        for ci, c in enumerate(obj["clusters"], start=1):
            if not isinstance(c, dict):
                raise InvalidAnswer("cluster entry is not an object")
            idx = c.get("sample_indices", c.get("sample indices", c.get("samples")))
            if not isinstance(idx, list):
                raise InvalidAnswer("cluster without sample indices")
            raw_reason[ci] = str(c.get("uniqueness_reasoning", c.get("uniqueness reasoning")) or "")
            for s in idx:
                s = _as_int(s)
                if not 1 <= s <= K:
                    repairs.append("index_out_of_range")
                elif raw[s - 1]:
                    repairs.append("index_in_two_clusters")
                else:
                    raw[s - 1] = ci
        nxt = len(obj["clusters"]) + 1
        for i in range(K):
            if not raw[i]:
                repairs.append("index_missing")
                created.add(nxt)
                raw[i] = nxt
                nxt += 1
        if len(repairs) > K // 2:
            raise InvalidAnswer(f"{len(repairs)} index repairs needed")
    else:
        raise InvalidAnswer("no assignment")
    mapping: dict[int, int] = {}
    for x in raw:
        mapping.setdefault(x, len(mapping) + 1)
    labels = [mapping[x] for x in raw]
    reasons = {mapping[r]: t for r, t in raw_reason.items() if r in mapping}
    if set(raw_reason) - set(mapping) or set(mapping) - set(raw_reason) - created:
        repairs.append("cluster_descriptions_mismatch")
    return labels, reasons, repairs


def parse_verification(obj: Any, asked: list[int]) -> dict[int, bool]:
    """Validate verdicts for the clusters in `asked` (in order). Returns {cluster: valid}."""
    if not isinstance(obj, dict) or not isinstance(obj.get("verdicts"), list):
        raise InvalidAnswer("no verdicts")
    v = obj["verdicts"]
    if len(v) != len(asked):
        raise InvalidAnswer(f"{len(v)} verdicts for {len(asked)} clusters")
    out = {}
    for c, item in zip(asked, v):
        if not isinstance(item, dict) or item.get("valid") not in (0, 1, True, False, "0", "1"):
            raise InvalidAnswer("verdict without valid 0/1")
        out[c] = str(item["valid"]) in ("1", "True")
    return out


def split_invalid(labels: list[int], valid: dict[int, bool]) -> list[int]:
    """Members of invalid clusters become singletons; returns canonical labels."""
    nxt = max(labels) + 1
    out = []
    for x in labels:
        if valid.get(x, True):
            out.append(x)
        else:
            out.append(nxt)
            nxt += 1
    return canonicalize(out)


def run_score(n_clusters: int, K: int) -> float:
    """D_i = C_i / S_i with S_i = K / C_i (mean cluster size) = C_i^2 / K."""
    return n_clusters / (K / n_clusters)


def aggregate(counts: Sequence[int], K: int) -> tuple[float | None, float | None]:
    if not counts:
        return None, None
    d = np.array([run_score(c, K) for c in counts], dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return float(d.mean()), se
