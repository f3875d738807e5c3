"""docs/architecture.md stays true: every module its package table lists exists, and every module
of those packages is listed (a package's own modules in its row, a sub-package's modules somewhere in
the document, qualified or not)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `((?:generator|scoring)/[a-z_/]*)` \|(.*)\|(.*)\|\s*$")
NAME = re.compile(r"`([a-z_][a-z0-9_./]*)`")


def rows() -> dict[str, str]:
    """package folder -> the text of its modules column (`scoring/` points to its own README)."""
    out = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            out[m.group(1)] = re.sub(r"\[[^]]*\]\([^)]*\)", "", m.group(3))  # links are not modules
    assert len(out) >= 10, "docs/architecture.md: the package table was not found"
    return out


def modules(folder: Path) -> tuple[list[str], list[str]]:
    mods = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__"))
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    return mods, subs


def test_every_listed_module_exists():
    gone = []
    for folder, text in rows().items():
        base = ROOT / folder
        assert base.is_dir(), f"docs/architecture.md lists {folder}, which does not exist"
        for name in NAME.findall(text):
            if "." in name or name.endswith(".md"):
                continue  # a qualified name or a file named in prose, checked below
            path = name.rstrip("/")
            if name.endswith("/") or "/" in path:
                ok = (base / path).is_dir() or (base / f"{path}.py").exists()
            else:
                ok = (base / f"{path}.py").exists() or (base / path).is_dir() or (base / path).exists()
            if not ok and name not in KNOWN_WORDS:
                gone.append(f"{folder}{name}")
    assert not gone, f"docs/architecture.md lists modules that do not exist: {gone}"


# backticked words in the modules column that name a thing inside a module, not a module
KNOWN_WORDS = {"run", "validate", "render", "schema", "page.html", "run_spec", "close_run", "build_mix", "run_log"}


def test_every_module_is_listed():
    doc = DOC.read_text()
    missing = []
    for folder, text in rows().items():
        if folder == "scoring/":
            continue  # its own README lists its modules
        base = ROOT / folder
        mods, subs = modules(base)
        named = set(NAME.findall(text))
        missing += [f"{folder}{m}" for m in mods if m not in named]
        missing += [f"{folder}{s}/" for s in subs if f"{s}/" not in named and s not in named]
        for s in subs:  # a sub-package's modules: named anywhere, as `mod`, `sub.mod` or `sub/mod`
            inner, _ = modules(base / s)
            missing += [f"{folder}{s}/{m}" for m in inner
                        if not re.search(rf"`(?:[a-z_.]*{s}[./])?{m}[`.(]", doc)]
    assert not missing, f"modules docs/architecture.md does not list: {missing}"
