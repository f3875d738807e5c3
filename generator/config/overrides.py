"""`--set KEY=VALUE` overrides: dotted paths into the spec's YAML data, checked as they are applied."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from generator.core.errors import SpecError
from generator.core.yaml_loader import load_yaml


def _set_error(dotted: str, message: str) -> SpecError:
    return SpecError(f"--set {dotted}: {message}")


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """`--set a.b=value`: values are YAML scalars, so `--set seed=3` is an int."""
    import copy

    data = copy.deepcopy(data)
    for dotted, raw in overrides.items():
        if isinstance(raw, str):
            try:
                value = load_yaml(Path("--set"), raw).data
            except SpecError as exc:
                raise _set_error(dotted, f"{exc.message}") from None
        else:
            value = raw
        parts = dotted.split(".")
        if not dotted or any(not p.strip() for p in parts):
            raise _set_error(dotted, "not a KEY path; write e.g. --set sampling.temperature=0.7")
        node: Any = data
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise _set_error(dotted, f"'{'.'.join(parts[:depth])}' is a list of {len(node)}; use an "
                                             f"index from 0 to {len(node) - 1}")
                key: Any = int(p)
            elif isinstance(node, dict):
                key = p
            else:
                raise _set_error(dotted, f"'{'.'.join(parts[:depth])}' is a single value, not a section; "
                                         f"set it directly")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return data
