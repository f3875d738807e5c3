"""The hostile-input corpus: every case fails as one line, fast, without reading outside its project.

Each case (tests/hostile/cases/*.case) runs one command in-process with click's CliRunner, in a
fresh project beside canary files. It must: exit 2; print nothing on stdout and exactly one line
`error: ...` on stderr that matches the case's pattern (file, line, what) and carries a fix
(`; ...`); take under 2 s; import no model runtime; open no canary or system file; print no
secret. A few cases also run in a subprocess, to check the installed entry point the same way.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hostile.corpus import CANARY, SECRET, all_cases

ROOT = Path(__file__).resolve().parents[2]
CASES = all_cases()
HEAVY = ("vllm", "torch", "transformers", "ray")
WATCHED = ("/etc/passwd", "/etc/hostname", "/proc/self/environ", "/etc/shadow")

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def test_corpus_is_large_and_covers_every_class():
    names = [c.name for c in CASES]
    assert len(names) >= 60
    for prefix in ("conf_", "yaml_", "tree_", "personas_", "tpl_", "count_", "secret_", "cli_", "mix_"):
        assert any(n.startswith(prefix) for n in names), prefix


def _outside_reads(opened: list[str], outside: Path, proj: Path) -> list[str]:
    bad = []
    for p in opened:
        real = os.path.realpath(p)
        if real.startswith(str(outside)) and not real.startswith(str(proj)):
            bad.append(real)
        if real in WATCHED:
            bad.append(real)
    return bad


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case, tmp_path, monkeypatch):
    global _opened
    from generator.cli.main import main

    outside = tmp_path.resolve()
    proj = case.write(outside)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("SYNTHGEN_TEST_CANARY", CANARY)  # an environment secret /proc/self/environ would show
    before = set(sys.modules)
    _opened = []
    t0 = time.perf_counter()
    try:
        res = CliRunner().invoke(main, case.cmd, catch_exceptions=False)
    finally:
        seconds = time.perf_counter() - t0
        opened, _opened = _opened, None
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stdout == "", res.stdout
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line
    assert re.search(case.expect, line), f"{line!r} !~ {case.expect!r}"
    assert "; " in line, f"no fix in {line!r}"
    assert CANARY not in res.output and SECRET not in res.output
    assert seconds < 2.0, f"{seconds:.2f}s"
    assert not [m for m in set(sys.modules) - before if m.split(".")[0] in HEAVY]
    assert not _outside_reads(opened, outside, proj)


SUBPROCESS = ["conf_template_abs_etc", "yaml_billion_laughs", "tpl_concat_doubling", "secret_api_key_env_is_key",
              "count_plan_too_large"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_hostile_case_in_a_subprocess(name, tmp_path):
    """The real entry point: one line, exit 2, and no model runtime among the imported modules."""
    case = next(c for c in CASES if c.name == name)
    proj = case.write(tmp_path.resolve())
    mods = tmp_path / "modules.txt"
    code = ("import sys\nsys.argv = ['synthgen', *sys.argv[1:]]\nfrom generator.cli import main\n"
            f"try:\n    main()\nfinally:\n    open({str(mods)!r}, 'w').write('\\n'.join(sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHGEN_TEST_CANARY": CANARY}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *case.cmd], cwd=proj, env=env, capture_output=True,
                         text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert res.returncode == 2 and res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(case.expect, lines[0]), res.stderr
    assert CANARY not in res.stderr and SECRET not in res.stderr
    loaded = {m.split(".")[0] for m in mods.read_text().split()}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert seconds < 10, f"{seconds:.1f}s including interpreter start"
