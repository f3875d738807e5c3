"""Bounds of a template's output schema: can structured decoding close the JSON in time?

Under a JSON-schema grammar a small model tends to keep writing inside a string until
`max_tokens` cuts it off, and the answer is lost. A schema whose every string has `maxLength`,
every array `maxItems` and every number a range has a longest serialization, so the grammar
itself forces the closing quotes and brackets; `worst_case_instance` builds that longest answer
(every list at `maxItems`, every string at `maxLength`) so it can be tokenized and compared with
the `max_tokens` a spec gives the template.

    >>> unbounded({"type": "object", "properties": {"a": {"type": "string"}}})
    ['$.a: string without maxLength']
"""
from __future__ import annotations

import functools
import json
from typing import Any

# Ordinary English prose: the worst case is measured on text that tokenizes like the answers do.
FILLER = ("The cell membrane controls what enters and leaves the cell, so nutrients can pass in "
          "while waste moves out. In 1858 a doctor noticed that water near the old pump made "
          "people sick; his map of cases showed why, and the city changed its wells. Each step "
          "depends on the one before it, and a small error early on grows larger later. ")


# Ordinary prose is ~4.4 characters per token with the embedded tokenizer, and the embedded model's
# finished structured answers ran at 1.7-4.1. A budget of worst-case characters / 2.5 covers answers
# of ordinary words; it cannot cover degenerate runs of digits (one token per digit).
MIN_CHARS_PER_TOKEN = 2.5


def unbounded(schema: dict, path: str = "$") -> list[str]:
    """Every place in `schema` whose serialized length has no upper bound."""
    out: list[str] = []
    if schema is False:
        return out  # admits nothing
    if not isinstance(schema, dict):
        return [f"{path}: schema {json.dumps(schema)[:40]} admits any value"]
    if "enum" in schema or "const" in schema:
        return out
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            out += unbounded(sub, f"{path}.{key}[{i}]")
    kind = schema.get("type")
    if isinstance(kind, list):
        out.append(f"{path}: a list of types {kind}, which cannot be sized")
    elif kind == "string" and "maxLength" not in schema:
        out.append(f"{path}: string without maxLength")
    elif kind in ("integer", "number") and not {"maximum", "exclusiveMaximum"} & set(schema):
        out.append(f"{path}: {kind} without maximum")
    elif kind in ("integer", "number") and not {"minimum", "exclusiveMinimum"} & set(schema):
        out.append(f"{path}: {kind} without minimum")
    elif kind == "array":
        if "maxItems" not in schema:
            out.append(f"{path}: array without maxItems")
        if isinstance(schema.get("items"), dict):
            out += unbounded(schema["items"], f"{path}[]")
        else:
            out.append(f"{path}: array without an items schema")
    elif kind == "object":
        if schema.get("additionalProperties", True) is not False:
            out.append(f"{path}: object without additionalProperties: false")
        for name, sub in (schema.get("properties") or {}).items():
            out += unbounded(sub, f"{path}.{name}")
    elif kind is None and not any(k in schema for k in ("anyOf", "oneOf", "allOf")):
        out.append(f"{path}: no type")
    return out


def _fill(n: int, filler: str, offset: int) -> str:
    text = (filler * (n // max(len(filler), 1) + 2))[offset % len(filler):]
    return text[:n]


def worst_case_instance(schema: dict, filler: str = FILLER) -> Any:
    """The longest value `schema` admits: lists at maxItems, strings at maxLength.

    Raises ValueError on an unbounded schema (see `unbounded`)."""
    problems = unbounded(schema)
    if problems:
        raise ValueError("unbounded schema: " + "; ".join(problems))
    counter = [0]

    def build(s: dict) -> Any:
        if "enum" in s or "const" in s:
            vals = s.get("enum", [s.get("const")])
            return max(vals, key=lambda v: len(json.dumps(v, ensure_ascii=False)))
        for key in ("anyOf", "oneOf"):
            if key in s:
                return max((build(sub) for sub in s[key]),
                           key=lambda v: len(json.dumps(v, ensure_ascii=False)))
        kind = s.get("type")
        if kind == "string":
            counter[0] += 97  # each string starts elsewhere in the filler, as real answers differ
            return _fill(int(s["maxLength"]), filler, counter[0])
        if kind == "integer":
            lo, hi = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
            return max((lo, hi), key=lambda v: len(str(v)))
        if kind == "number":
            lo, hi = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
            return float(max((lo, hi), key=lambda v: len(str(v)))) + 0.123456789
        if kind == "boolean":
            return False
        if kind == "array":
            return [build(s["items"]) for _ in range(int(s["maxItems"]))]
        if kind == "object":
            return {name: build(sub) for name, sub in (s.get("properties") or {}).items()}
        if kind == "null":
            return None
        raise ValueError(f"cannot build a worst case for type {kind!r}")

    return build(schema)


def worst_case_json(schema: dict, filler: str = FILLER) -> str:
    """The worst case serialized as structured decoding writes it (compact, no extra whitespace)."""
    return json.dumps(worst_case_instance(schema, filler), ensure_ascii=False, separators=(",", ":"))


def worst_case_chars(schema: dict) -> int:
    """len(worst_case_json(schema)), counted without building the answer (a schema may allow
    a billion items). Raises ValueError on an unbounded schema."""
    problems = unbounded(schema)
    if problems:
        raise ValueError("unbounded schema: " + "; ".join(problems))

    def size(s: dict) -> int:
        if "enum" in s or "const" in s:
            return max(len(json.dumps(v, ensure_ascii=False, separators=(",", ":")))
                       for v in s.get("enum", [s.get("const")]))
        for key in ("anyOf", "oneOf"):
            if key in s:
                return max(size(sub) for sub in s[key])
        kind = s.get("type")
        if kind == "string":
            return int(s["maxLength"]) + 2  # the filler needs no escapes
        if kind in ("integer", "number"):
            return len(json.dumps(worst_case_instance(s)))
        if kind == "boolean":
            return 5
        if kind == "null":
            return 4
        if kind == "array":
            n = int(s["maxItems"])
            return 2 + n * size(s["items"]) + max(n - 1, 0)
        if kind == "object":
            props = s.get("properties") or {}
            return 2 + sum(len(json.dumps(k, ensure_ascii=False)) + 1 + size(v) for k, v in props.items()) \
                + max(len(props) - 1, 0)
        raise ValueError(f"cannot size a worst case for type {kind!r}")

    return size(schema)


@functools.lru_cache(maxsize=256)
def _worst_chars(schema_json: str) -> int | None:
    try:
        return worst_case_chars(json.loads(schema_json))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return None  # unbounded, or a shape this module cannot walk ($ref, a list of types, `true`)


def sized(schema: Any) -> int | None:
    """`worst_case_chars(schema)`, or None for a schema that is unbounded or cannot be sized (never raises)."""
    if not isinstance(schema, dict) or not schema:
        return None
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return _worst_chars(key)


def fits(schema: dict | None, max_tokens: int) -> bool:
    """Whether every answer `schema` admits fits `max_tokens` at MIN_CHARS_PER_TOKEN.

    False for no schema or an unbounded one. When this holds, an answer that `max_tokens` cut off is
    a degenerate run (digits, a token each), not an answer that needed more room."""
    chars = sized(schema)
    return chars is not None and chars / MIN_CHARS_PER_TOKEN <= max_tokens
