"""The smallest instance of a JSON schema: a placeholder answer for checking templates that read a
structured stage before any model runs, and for stand-in backends."""
from __future__ import annotations

import hashlib
from typing import Any


def minimal_instance(schema: dict, salt: str) -> Any:
    t = schema.get("type")
    if t == "object":
        return {k: minimal_instance(v, salt + k) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        n = max(int(schema.get("minItems", 1)), 1)
        return [minimal_instance(schema.get("items", {"type": "string"}), f"{salt}{i}") for i in range(n)]
    if t == "integer":
        return int(schema.get("minimum", 1))
    if t == "number":
        return 1.5
    if t == "boolean":
        return True
    return f"text {hashlib.sha1(salt.encode()).hexdigest()[:8]}"
