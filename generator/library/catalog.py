"""Finds and loads library files: templates, persona sets and topic trees.

A name resolves against the spec's own folder first, then the built-in library (the
`templates/`, `personas/`, `topics/` and `specs/` folders shipped with synthgen), so a project
can override any built-in file by writing one of the same name.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.core.confine import Confinement
from generator.core.errors import SpecError
from generator.core.textfile import has_control, read_text
from generator.core.paths import builtin_root
from generator.library.prompt_template import Template, parse_template
from generator.core.yaml_loader import load_yaml

KINDS = {"templates": (".j2",), "personas": (".jsonl",), "topics": (".yaml", ".yml"), "specs": (".yaml", ".yml")}


class Refused(PermissionError):
    """A reference that resolves outside the confinement (the message names the fix)."""


def resolve(kind: str, ref: str, base_dir: Path | None, confine: Confinement | None = None) -> Path:
    """Resolve a library reference.

    A path (`./x.j2`, `../t/x.yaml`, anything with the kind's suffix) resolves against the spec's
    folder, then the built-in library. A name (`math/word_problem`, `core`) resolves in the
    project's `<kind>/` folder (beside the spec, or one level up when the spec lives in `specs/`),
    then the built-in library. With `confine`, a file that resolves outside its roots (an
    absolute path, a `../` escape, a symlink pointing out) raises Refused instead.
    """
    if not isinstance(ref, str) or not ref.strip() or "\x00" in ref:
        raise FileNotFoundError(f"no {kind[:-1]} named {ref!r}")
    exts = KINDS[kind]
    ref_path = Path(ref)
    pathlike = ref_path.is_absolute() or ref.startswith(".") or ref_path.suffix in exts
    builtin = builtin_root(kind)
    if pathlike:
        roots = ([base_dir] if base_dir else []) + [builtin]
    else:
        roots = ([base_dir / kind, base_dir.parent / kind] if base_dir else []) + [builtin]
    candidates: list[Path] = []
    for root in dict.fromkeys(roots):
        p = ref_path if ref_path.is_absolute() else root / ref_path
        candidates.append(p)
        if p.suffix not in exts:
            candidates.extend(p.with_name(p.name + e) for e in exts)
    for c in candidates:
        if not c.is_file():
            continue
        if confine is not None and not confine.permits(c):
            try:  # the first file found is outside: refuse rather than fall back to another one
                confine.check(c, kind[:-1], ref)
            except SpecError as exc:
                raise Refused(exc.message) from None
        return c.resolve()
    raise FileNotFoundError(f"no {kind[:-1]} '{ref}' (looked in {', '.join(str(r) for r in dict.fromkeys(roots))})")


def list_library(kind: str, base_dir: Path | None = None) -> list[Path]:
    roots = ([base_dir / kind] if base_dir and (base_dir / kind).is_dir() else []) + [builtin_root(kind)]
    seen: dict[str, Path] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in KINDS[kind] and not p.name.startswith("_"):
                seen.setdefault(str(p.relative_to(root).with_suffix("")), p)
    return list(seen.values())


def template_name(path: Path) -> str:
    root = builtin_root("templates")
    try:
        return str(path.relative_to(root).with_suffix(""))
    except ValueError:
        return path.stem


@functools.lru_cache(maxsize=256)
def _load_template_cached(path: Path, mtime: float, name: str, roots: tuple[Path, ...] | None,
                          confine: Confinement | None) -> Template:
    return parse_template(path, name=name, roots=roots, confine=confine)


def load_template(path: Path, name: str | None = None, roots: tuple[Path, ...] | None = None,
                  confine: Confinement | None = None) -> Template:
    """A template (cached by file, version, include roots and confinement)."""
    return _load_template_cached(path, path.stat().st_mtime, name or template_name(path), roots, confine)


# ---------------------------------------------------------------- topics

@dataclass(frozen=True)
class TopicCell:
    """One unit of allocation: a topic-tree node (a leaf by default) or an inline topic."""

    id: str            # full path, " / "-joined; stable key for seeds and lineage
    topic: str         # the path above the node
    subtopic: str      # the node's own name
    keywords: tuple[str, ...]
    level: str | None
    weight: float = 1.0
    source: str = ""

    def as_vars(self) -> dict[str, Any]:
        return {"topic": self.topic, "subtopic": self.subtopic, "keywords": list(self.keywords),
                "level": self.level, "topic_path": self.id}


@dataclass
class TopicNode:
    name: str
    path: tuple[str, ...]
    keywords: list[str] = field(default_factory=list)
    level: str | None = None
    weight: float = 1.0
    children: list["TopicNode"] = field(default_factory=list)
    line: int = 0

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def all_keywords(self) -> list[str]:
        seen: dict[str, None] = {}
        for n in self.walk():
            for k in n.keywords:
                seen.setdefault(k, None)
        return list(seen)


@dataclass
class TopicTree:
    name: str
    description: str
    roots: list[TopicNode]
    file: Path

    def nodes(self):
        for r in self.roots:
            yield from r.walk()

    def leaves(self) -> list[TopicNode]:
        return [n for n in self.nodes() if not n.children]


NODE_KEYS = {"name", "keywords", "level", "weight", "children"}


@functools.lru_cache(maxsize=32)
def _load_tree_cached(path: Path, mtime: float) -> TopicTree:
    doc = load_yaml(path)
    data = doc.data
    if not isinstance(data, dict) or "nodes" not in data:
        raise doc.error((), "a topic tree needs `name`, `description` and `nodes:`; add them")
    extra = set(data) - {"name", "description", "nodes"}
    if extra:
        key = sorted(extra)[0]
        raise doc.error((key,), f"unknown key '{key}' in topic tree; allowed: name, description, nodes")

    def build(raw: Any, loc: tuple, parent: tuple[str, ...], inherited_level: str | None) -> TopicNode:
        if not isinstance(raw, dict) or "name" not in raw:
            raise doc.error(loc, "each topic node needs a `name`; add one")
        bad = set(raw) - NODE_KEYS
        if bad:
            key = sorted(bad)[0]
            raise doc.error(loc + (key,), f"unknown key '{key}' in topic node; allowed: {', '.join(sorted(NODE_KEYS))}")
        if not isinstance(raw["name"], (str, int, float)) or not str(raw["name"]).strip():
            raise doc.error(loc + ("name",), "a topic `name` must be a non-empty string; fix the name")
        name = str(raw["name"]).strip()
        level = raw.get("level", inherited_level)
        keywords = raw.get("keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, (str, int, float)) for k in keywords):
            raise doc.error(loc + ("keywords",), "`keywords` must be a list of words; write e.g. [fractions, halves]")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise doc.error(loc + ("weight",), f"topic weight must be a number above 0, got {weight!r}; "
                                               f"remove the node to drop it")
        children = raw.get("children") or []
        if not isinstance(children, list):
            raise doc.error(loc + ("children",), "`children` must be a list of topic nodes; write `- name: ...` entries")
        node = TopicNode(name=name, path=parent + (name,), keywords=[str(k) for k in keywords],
                         level=str(level) if level is not None else None, weight=float(weight),
                         line=doc.where(loc)[0])
        names: set[str] = set()
        for i, child in enumerate(children):
            c = build(child, loc + ("children", i), node.path, node.level)
            if c.name in names:
                raise doc.error(loc + ("children", i), f"duplicate sibling topic '{c.name}'; rename one")
            names.add(c.name)
            node.children.append(c)
        if not node.children and not node.keywords:
            raise doc.error(loc, f"leaf topic '{name}' has no `keywords:`; add 3-8 keywords")
        return node

    if not isinstance(data["nodes"], list) or not data["nodes"]:
        raise doc.error(("nodes",), "`nodes:` must be a non-empty list of topic nodes; write `- name: ...` entries")
    roots = [build(r, ("nodes", i), (), None) for i, r in enumerate(data["nodes"])]
    return TopicTree(name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
                     roots=roots, file=path)


def load_topic_tree(path: Path) -> TopicTree:
    return _load_tree_cached(path, path.stat().st_mtime)


def tree_cells(tree: TopicTree, under: list[str] | None = None, depth: int | None = None,
               weight: float = 1.0) -> list[TopicCell]:
    """Cells of a tree: leaves by default, or every node at `depth` (1 = top level)."""
    if depth is not None:
        nodes = [n for n in tree.nodes() if len(n.path) == depth or (not n.children and len(n.path) < depth)]
    else:
        nodes = tree.leaves()
    if under:
        prefixes = [tuple(p.strip() for p in u.split("/")) for u in under]
        nodes = [n for n in nodes if any(n.path[: len(p)] == p for p in prefixes)]
    cells = []
    for n in nodes:
        topic = " / ".join(n.path[:-1]) or tree.name
        cells.append(TopicCell(id=" / ".join(n.path), topic=topic, subtopic=n.name,
                               keywords=tuple(n.all_keywords()[:12]), level=n.level,
                               weight=weight * n.weight, source=str(tree.file.name)))
    return cells


# ---------------------------------------------------------------- personas

PERSONA_FIELDS = ("id", "description")


@functools.lru_cache(maxsize=16)
def _load_personas_cached(path: Path, mtime: float) -> tuple[dict, ...]:
    out = []
    ids: set[str] = set()
    for lineno, line in enumerate(read_text(path, "persona file").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = getattr(exc, "msg", "nested too deeply")
            raise SpecError(f"invalid JSON in persona file: {msg}; one JSON object per line", file=path,
                            line=lineno, col=getattr(exc, "colno", None)) from None
        if not isinstance(rec, dict):
            raise SpecError("persona record must be a JSON object; write {\"id\": ..., \"description\": ...}", file=path,
                            line=lineno)
        if has_control(rec):
            raise SpecError("control character in a persona (from an escape such as \\u001b); remove it",
                            file=path, line=lineno)
        missing = [f for f in PERSONA_FIELDS if f not in rec]
        if missing:
            raise SpecError(f"persona record lacks {', '.join(missing)}; add them", file=path, line=lineno)
        if not isinstance(rec["id"], str) or not isinstance(rec["description"], str):
            raise SpecError("persona `id` and `description` must be strings; quote them", file=path, line=lineno)
        if rec["id"] in ids:
            raise SpecError(f"duplicate persona id '{rec['id']}'; make the ids unique", file=path, line=lineno)
        ids.add(rec["id"])
        out.append(rec)
    if not out:
        raise SpecError("persona file is empty; add one JSON object per line", file=path)
    return tuple(out)


def load_personas(path: Path) -> list[dict]:
    return [dict(p) for p in _load_personas_cached(path, path.stat().st_mtime)]
