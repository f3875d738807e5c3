"""Strict YAML: duplicate keys are errors, and every value remembers where it was written.

PyYAML silently keeps the last of two equal keys; a spec loader must not. We compose the node
tree ourselves so that each path (tuple of keys and indices) maps to a (line, column) that
errors can point at. The same walk enforces the limits a hostile file would otherwise break
(docs/security.md): nesting depth, alias expansion (a "billion laughs" file), recursive anchors,
and tags other than the plain YAML types (`!!python/...`, custom `!tags`), which are refused by
name. Merge keys (`<<`) follow YAML's rule: keys written in the mapping override merged ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from generator.core.errors import SpecError
from generator.core.textfile import check_text, has_control, read_text
from generator.core.yaml_errors import explain

Path_ = tuple[Any, ...]

MAX_DEPTH = 64            # nesting levels of mappings and lists
MAX_EXPANDED = 500_000    # values after expanding aliases (each alias re-counts what it names)
# Largest YAML file loaded (specs, topic trees, mix configs). PyYAML (with libyaml) still builds a
# Python node per value: a dense file costs about 1.4 s of CPU per MiB, so the limit keeps every
# load under ~2 s and far above real files (the largest built-in topic tree is 0.11 MiB).
# SYNTHGEN_MAX_YAML_BYTES raises it.
MAX_YAML_BYTES = int(os.environ.get("SYNTHGEN_MAX_YAML_BYTES") or 1024 * 1024)

_T = "tag:yaml.org,2002:"
SCALAR_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
MERGE_TAG = _T + "merge"
_STR = _T + "str"


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


_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses a 5 MB file in well under 2 s


class _StrictLoader(_Base):  # type: ignore[misc, valid-type]
    pass


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_T):] if tag.startswith(_T) else tag


class _Walker:
    """Node tree -> Python values with positions, checking the limits on the way."""

    def __init__(self, file: Path, loader: yaml.SafeLoader):
        self.file, self.loader = file, loader
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.expanded = 0
        self.done: dict[int, Any] = {}   # converted containers by node id (aliases reuse them)
        self.sizes: dict[int, int] = {}  # their expanded sizes
        self.active: set[int] = set()  # ids of nodes being converted: a repeat is a recursive anchor

    def fail(self, node: yaml.Node, message: str) -> SpecError:
        return SpecError(message, file=self.file, line=node.start_mark.line + 1, col=node.start_mark.column + 1)

    def convert(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        mark = node.start_mark
        self.positions.setdefault(path, (mark.line + 1, mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            self.expanded += 1
            if node.tag == _STR:  # the common case, without the constructor's overhead
                if has_control(node.value):  # from an escape such as "\e[31m" or "\x00"
                    raise self.fail(node, "control character in a string (from an escape such as \\e or "
                                          "\\x00); remove it (only tab and newline are allowed)")
                return node.value
            if node.tag not in SCALAR_TAGS:
                raise self.fail(node, f"YAML tag '{_tag_name(node.tag)}' is not allowed; remove it "
                                      f"(only plain strings, numbers, booleans, null and dates)")
            return self.loader.construct_object(node, deep=True)
        key = id(node)
        if key in self.done:  # an alias: the same value again, counted at its full size
            self.expanded += self.sizes[key]
            if self.expanded > MAX_EXPANDED:
                raise self.fail(node, f"the file expands to more than {MAX_EXPANDED:,} values (aliases "
                                      f"repeating aliases); write the values out or use fewer aliases")
            return self.done[key]
        if key in self.active:
            raise self.fail(node, "an alias refers to a mapping or list that contains it (a recursive "
                                  "anchor); remove the alias")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nesting deeper than {MAX_DEPTH} levels; flatten the structure")
        before = self.expanded
        self.expanded += 1
        self.active.add(key)
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _T + "seq":
                    raise self.fail(node, f"YAML tag '{_tag_name(node.tag)}' is not allowed; remove it")
                value: Any = [self.convert(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
            elif node.tag != _T + "map":
                raise self.fail(node, f"YAML tag '{_tag_name(node.tag)}' is not allowed; remove it")
            else:
                value = self.mapping(node, path, depth)
        finally:
            self.active.discard(key)
        self.done[key], self.sizes[key] = value, self.expanded - before
        return value

    def key(self, key_node: yaml.Node) -> Any:
        if not isinstance(key_node, yaml.ScalarNode):
            raise self.fail(key_node, "mapping keys must be scalars; quote the key")
        if key_node.tag == _STR and not has_control(key_node.value):  # most keys: skip the constructor
            return key_node.value
        if key_node.tag not in SCALAR_TAGS:
            raise self.fail(key_node, f"YAML tag '{_tag_name(key_node.tag)}' is not allowed; remove it")
        return self.loader.construct_object(key_node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict:
        out: dict[Any, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = self.key(key_node)
            if key in out:
                first = self.positions.get(path + (key,), (0, 0))
                raise self.fail(key_node, f"duplicate key '{key}' (first written at line {first[0]}); "
                                          f"keep one of them")
            # keys point at the key itself, which is where a reader looks for "unknown key"
            self.positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.convert(value_node, path + (key,), depth + 1)
        for merge in merges:  # YAML merge: written keys win; among merged mappings the first wins
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    raise self.fail(src, "a merge key (<<) needs a mapping or a list of mappings; point it at an anchored mapping (<<: *name)")
                if id(src) in self.active:
                    raise self.fail(src, "a merge key (<<) refers to the mapping that contains it; remove it")
                merged = self.convert(src, path + ("<<",), depth + 1)
                for k, v in merged.items():
                    if k not in out:
                        out[k] = v
                        self.positions.setdefault(path + (k,), self.positions.get(path + ("<<",), (1, 1)))
        return out


def load_yaml(file: str | Path, text: str | None = None) -> Located:
    """Parse one YAML document strictly. Raises SpecError with file:line:col."""
    file = Path(file)
    if text is None:
        text = read_text(file, "YAML file", limit=MAX_YAML_BYTES)
    else:
        check_text(text, file)
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        walker = _Walker(file, loader)
        data = walker.convert(node, ()) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        line, col, message = explain(text, exc)
        raise SpecError(f"invalid YAML: {message}", file=file, line=line, col=col) from None
    except yaml.YAMLError as exc:  # reader errors and the like: one line, never a traceback
        raise SpecError(f"invalid YAML: {' '.join(str(exc).split())}; fix the file there", file=file) from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels; flatten the structure", file=file) from None
    finally:
        loader.dispose()
    return Located(data=data, file=file, positions=walker.positions if node is not None else {})
