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

import json
from typing import Any

# Ordinary English prose: the worst case is measured on text that tokenizes like the answers do.
FILLER = ("The cell membrane controls what enters and leaves the cell, so nutrients can pass in "
          "while waste moves out. In 1858 a doctor noticed that water near the old pump made "
          "people sick; his map of cases showed why, and the city changed its wells. Each step "
          "depends on the one before it, and a small error early on grows larger later. ")


def unbounded(schema: dict, path: str = "$") -> list[str]:
    """Every place in `schema` whose serialized length has no upper bound."""
    out: list[str] = []
    if "enum" in schema or "const" in schema:
        return out
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            out += unbounded(sub, f"{path}.{key}[{i}]")
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema:
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
