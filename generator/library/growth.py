"""Growing the library with a model: new personas from seed personas, new subtopics of a node.

Both ask for structured output (so even a small model returns parseable records), then drop
near duplicates of what exists and of each other before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.core.backend import Backend, Request, Sampling
from generator.library.catalog import builtin_root, load_template

RELATIONS = ["a colleague of", "a customer of", "a neighbour of", "a teacher of", "a former student of",
             "a relative of", "a friendly rival of", "an online acquaintance of", "the manager of",
             "someone who buys from", "someone who lives far away from but writes to"]
WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDupFilter:
    """Word-set Jaccard against everything kept so far (the texts are one sentence each)."""

    def __init__(self, existing: list[str], threshold: float):
        self.threshold = threshold
        self.kept = [_words(t) for t in existing]

    def admit(self, text: str) -> bool:
        w = _words(text)
        if not w or any(jaccard(w, k) >= self.threshold for k in self.kept):
            return False
        self.kept.append(w)
        return True


@dataclass
class ExpandStats:
    requested: int = 0
    model_calls: int = 0
    invalid: int = 0
    near_duplicates: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)


def _tool_template(name: str):
    return load_template(builtin_root("templates") / f"{name}.j2", name=name)


def expand_personas(seeds: list[dict], backend: Backend, count: int, seed: int = 0,
                    threshold: float = 0.5, max_tokens: int = 280) -> tuple[list[dict], ExpandStats]:
    """`count` new personas, each related to a random seed persona; near duplicates removed."""
    tpl = _tool_template("tools/persona_expand")
    rng = random.Random(seed)
    dedup = NearDupFilter([p["description"] for p in seeds], threshold)
    stats = ExpandStats()
    out: list[dict] = []
    attempt = 0
    while len(out) < count and attempt < 4:  # oversample, then top up if dedup ate too many
        want = int((count - len(out)) * 1.5) + 2
        reqs = []
        for i in range(want):
            base = rng.choice(seeds)
            relation = rng.choice(RELATIONS)
            msgs = tpl.render_messages({"seed_persona": base, "relation": relation})
            reqs.append(Request(id=f"{attempt}-{i}-{base['id']}", messages=tuple(msgs),
                                sampling=Sampling(temperature=1.0, top_p=0.95, max_tokens=max_tokens,
                                                  seed=rng.randrange(2**31 - 1)),
                                json_schema=tpl.output_schema))
        stats.requested += len(reqs)
        for res in backend.generate(reqs):
            stats.model_calls += 1
            try:
                rec = json.loads(res.text)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("description"), str):
                stats.invalid += 1
                continue
            if len(out) >= count:
                break
            if not dedup.admit(rec["description"] + " " + str(rec.get("occupation", ""))):
                stats.near_duplicates += 1
                continue
            rec["id"] = "x" + hashlib.sha256(rec["description"].encode()).hexdigest()[:10]
            rec["expanded_from"] = res.id.rsplit("-", 1)[-1]
            out.append({"id": rec.pop("id"), **rec})
        attempt += 1
    stats.kept = len(out)
    if len(out) < count:
        stats.notes.append(f"only {len(out)} of {count} survived validation and deduplication")
    return out, stats


def expand_topic_node(tree_file: Path, node_path: str, backend: Backend, count: int = 6, seed: int = 0,
                      threshold: float = 0.6, max_tokens: int = 800) -> tuple[dict, list[dict], ExpandStats]:
    """New children for the node at `node_path` (" / "-joined); returns (updated raw tree, new nodes)."""
    from generator.core.yaml_loader import load_yaml

    raw = load_yaml(tree_file).data  # the same strict loader and limits as every user YAML file
    parts = [p.strip() for p in node_path.split("/") if p.strip()]
    nodes, node = raw["nodes"], None
    for part in parts:
        node = next((n for n in nodes if n["name"] == part), None)
        if node is None:
            raise KeyError(f"{tree_file}: no node '{part}' on the path '{node_path}'; write the node names as the tree "
                           f"spells them, joined with ' / '")
        nodes = node.setdefault("children", [])
    if node is None:
        raise KeyError(f"{tree_file}: '{node_path}' names no node; give a path of node names joined with ' / '")
    existing = [c["name"] for c in node.get("children", [])]
    tpl = _tool_template("tools/topic_expand")
    msgs = tpl.render_messages({"node_path": " / ".join(parts), "existing": existing, "count": count})
    rng = random.Random(seed)
    reqs = [Request(id=str(i), messages=tuple(msgs), json_schema=tpl.output_schema,
                    sampling=Sampling(temperature=0.9, top_p=0.95, max_tokens=max_tokens,
                                      seed=rng.randrange(2**31 - 1))) for i in range(2)]
    stats = ExpandStats(requested=len(reqs))
    dedup = NearDupFilter(existing, threshold)
    new: list[dict] = []
    for res in backend.generate(reqs):
        stats.model_calls += 1
        try:
            items = json.loads(res.text)["subtopics"]
        except (json.JSONDecodeError, KeyError, TypeError):
            stats.invalid += 1
            continue
        for item in items:
            name = str(item.get("name", "")).strip()
            kws = [str(k).strip() for k in item.get("keywords", []) if str(k).strip()]
            if not name or len(kws) < 3:
                stats.invalid += 1
                continue
            if len(new) >= count or not dedup.admit(name):
                stats.near_duplicates += 1
                continue
            new.append({"name": name, "keywords": kws[:8]})
    node["children"].extend(new)
    stats.kept = len(new)
    return raw, new, stats


def write_personas(path: Path, personas: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for p in personas:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")


def dump_tree(raw: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=100)
