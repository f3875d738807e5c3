"""Strict YAML: duplicate keys are errors, and every value remembers where it was written.

PyYAML silently keeps the last of two equal keys; a spec loader must not. We compose the node
tree ourselves so that each path (tuple of keys and indices) maps to a (line, column) that
errors can point at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from generator.core.errors import SpecError

Path_ = tuple[Any, ...]


@dataclass
class Located:
    """A parsed YAML document plus the 1-based line:col of every path inside it."""

    data: Any
    file: Path
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> tuple[int, int]:
        """Position of the deepest prefix of `path` that was written in the file."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))

    def error(self, path: Path_, message: str) -> SpecError:
        line, col = self.where(path)
        return SpecError(message, file=self.file, line=line, col=col)


class _StrictLoader(yaml.SafeLoader):
    pass


def _convert(node: yaml.Node, path: Path_, positions: dict, file: Path, loader: yaml.SafeLoader) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<) before we check duplicates
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                raise SpecError("mapping keys must be scalars", file=file,
                                line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
            if key in out:
                first = positions.get(path + (key,), (0, 0))
                raise SpecError(
                    f"duplicate key '{key}' (first written at line {first[0]}); keep one of them",
                    file=file, line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
            out[key] = _convert(value_node, path + (key,), positions, file, loader)
            # keys point at the key itself, which is where a reader looks for "unknown key"
            positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, path + (i,), positions, file, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(file: str | Path, text: str | None = None) -> Located:
    """Parse one YAML document strictly. Raises SpecError with file:line:col."""
    file = Path(file)
    if text is None:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError("file not found; check the path", file=file) from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        positions: dict[Path_, tuple[int, int]] = {}
        data = _convert(node, (), positions, file, loader) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError(f"invalid YAML: {exc.problem or exc}", file=file, line=line, col=col) from None
    finally:
        loader.dispose()
    return Located(data=data, file=file, positions=positions)
