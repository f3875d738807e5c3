"""The layering in docs/architecture.md, enforced: a wrong-way import fails the suite."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" not in proc.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_every_package_is_listed_for_wheels():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for top in ("generator", "scoring"):
        for init in (ROOT / top).rglob("__init__.py"):
            pkg = ".".join(init.parent.relative_to(ROOT).parts)
            assert pkg in listed, f"{pkg} is missing from [tool.setuptools] packages in pyproject.toml"
