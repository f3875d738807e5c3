"""Loads the hostile-input corpus: one `.case` file per malformed or hostile input.

A case file holds the command to run, a regular expression the one error line must match, and
the files of a small project (written into a fresh folder beside canary files the project must
never read)::

    # cmd: validate spec.yaml
    # expect: spec\\.yaml:5:\\d+: template '/etc/passwd' resolves to
    === spec.yaml
    name: h
    ...
    === @bytes templates/t.j2          (content with Python escapes: \\x00, \\xe9)
    === @link templates/x.j2 -> {OUTSIDE}/canary.j2

`{OUTSIDE}` is the folder around the project (where the canaries live).
"""
from __future__ import annotations

import codecs
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

CASES = Path(__file__).resolve().parent / "cases"
CANARY = "CANARY-7f3a9c-must-never-be-printed"
SECRET = "sk-live-9aB3xQ7rT2mK8vL4pZ6wN1cD"  # a key-like value some cases paste into settings

DEFAULTS = {
    "templates/t.j2": "Write a short note about {{ topic }}.\n",
    "topics/tree.yaml": "name: tree\ndescription: d\nnodes:\n  - name: A\n    children:\n"
                        "      - {name: A1, keywords: [a, b]}\n      - {name: A2, keywords: [c, d]}\n",
    "personas/p.jsonl": '{"id": "p1", "description": "a baker"}\n{"id": "p2", "description": "a pilot"}\n',
    "data.jsonl": '{"text": "one two three"}\n{"text": "four five six"}\n{"text": "seven eight"}\n',
}
OUTSIDE_FILES = {
    "canary.txt": CANARY + "\n",
    "canary.j2": CANARY + " {{ topic }}\n",
    "canary.yaml": f"name: c\ndescription: d\nnodes:\n  - {{name: {CANARY}, keywords: [{CANARY}]}}\n",
    "canary.jsonl": f'{{"id": "c", "description": "{CANARY}"}}\n',
    "shared/canary.j2": CANARY + " {{ topic }}\n",
}


@dataclass
class Case:
    name: str
    cmd: list[str]
    expect: str
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def write(self, outside: Path) -> Path:
        """Canaries in `outside`, the project in `outside/proj`; returns the project folder."""
        for rel, text in OUTSIDE_FILES.items():
            (outside / rel).parent.mkdir(parents=True, exist_ok=True)
            (outside / rel).write_text(text)
        proj = outside / "proj"
        proj.mkdir()
        for rel, text in DEFAULTS.items():
            if rel not in self.files and rel not in self.links:
                (proj / rel).parent.mkdir(parents=True, exist_ok=True)
                (proj / rel).write_text(text)
        for rel, data in self.files.items():
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            (proj / rel).write_bytes(data.replace(b"{OUTSIDE}", str(outside).encode()))
        for rel, target in self.links.items():
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target.replace("{OUTSIDE}", str(outside)), proj / rel)
        return proj


def parse(path: Path) -> Case:
    cmd: list[str] = []
    expect = ""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    current: tuple[str, str] | None = None  # (kind, path)
    body: list[str] = []

    def flush() -> None:
        if current is None:
            return
        kind, rel = current
        text = "\n".join(body) + "\n"
        files[rel] = codecs.escape_decode(text.encode())[0] if kind == "bytes" else text.encode()

    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("=== "):
            flush()
            head = line[4:].strip()
            body = []
            if head.startswith("@link "):
                rel, _, target = head[6:].partition(" -> ")
                links[rel.strip()] = target.strip()
                current = None
            elif head.startswith("@bytes "):
                current = ("bytes", head[7:].strip())
            else:
                current = ("text", head)
        elif current is None and line.startswith("# cmd:"):
            cmd = shlex.split(line[6:].strip())
        elif current is None and line.startswith("# expect:"):
            expect = line[9:].strip()
        elif current is not None:
            body.append(line)
    flush()
    if current is not None and body and body[-1] == "":
        pass
    assert cmd and expect, f"{path.name}: needs `# cmd:` and `# expect:`"
    return Case(name=path.stem, cmd=cmd, expect=expect, files=files, links=links)


def all_cases() -> list[Case]:
    return [parse(p) for p in sorted(CASES.glob("*.case"))]
