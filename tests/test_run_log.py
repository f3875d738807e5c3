"""Every run leaves `run.log` in its folder: its warnings (the ones the CLI prints) and INFO lines of
its milestones, timestamped, appended by each resume; no secret in it. The CLI's --log-level / -v
set what reaches stderr, not what the run log holds. The model is the scripted fake backend."""
from __future__ import annotations

import logging
import re

import pytest
from click.testing import CliRunner

import generator
from generator.cli.main import main
from generator.config.spec import load_spec
from generator.core.logs import run_log
from generator.engine.executors.local import LocalExecutor
from generator.testing.fake import FakeBackend

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
FLAGGED = "records were flagged"


def empty_fake(c, **_):
    """Every answer empty: every record ends `empty`, so the run warns that records were flagged."""
    return FakeBackend(model=c.name, responder=lambda r: "")


def entries(text: str) -> list[str]:
    """The log's entries (a traceback continues its entry on the following lines)."""
    return [line for line in text.splitlines() if STAMP.match(line)]


def test_a_run_logs_its_warning_and_milestones_and_a_resume_appends(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml")
    run = tmp_path / "run"
    generator.run(spec, out=run, limit=4, executor=LocalExecutor(backend_factory=empty_fake))
    first = (run / "run.log").read_text()
    lines = entries(first)
    assert lines and all(STAMP.match(x) for x in lines)
    warned = [x for x in lines if " WARNING " in x and FLAGGED in x]
    assert len(warned) == 1 and "{'empty': 4}" in warned[0]
    for milestone in ("plan: ", "start: ", "shard part-", "done: 4 of 4 records"):
        assert any(f"INFO generator." in x and milestone in x for x in lines), milestone

    # the resume plans the rest and appends to the same file: the first session's lines stay first
    generator.run(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(model=c.name)))
    second = (run / "run.log").read_text()
    assert second.startswith(first) and len(second) > len(first)
    added = entries(second[len(first):])
    assert any("start: " in x and "to generate" in x for x in added)
    assert sum("run log opened" in x for x in entries(second)) == 2
    # the resumed session flags the 4 empty records still in the run: its own warning, once
    assert sum(FLAGGED in x for x in added) == 1


def test_a_failed_run_says_how_it_ended_in_its_log(proj, tmp_path):
    class Broken(FakeBackend):
        def generate(self, requests, on_result=None):
            raise RuntimeError("engine fell over")
            yield  # a generator, like every backend's

    spec = load_spec(proj / "spec.yaml")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="fell over"):
        generator.run(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: Broken()))
    last = entries((run / "run.log").read_text())[-1]
    assert " ERROR " in last and "RuntimeError: engine fell over" in last


def test_secrets_never_reach_the_run_log(tmp_path):
    log = logging.getLogger("generator.engine.backends.openai_http")
    with run_log(tmp_path):
        log.warning("endpoint https://user:pw@host/v1?api_key=abc123 refused key sk-abcdef0123456789")
    text = (tmp_path / "run.log").read_text()
    assert "endpoint" in text and "pw@" not in text and "abc123" not in text and "sk-abcdef" not in text


def test_the_run_log_leaves_logging_as_it_found_it(tmp_path, caplog):
    """INFO lines go to the file without reaching handlers that asked for warnings only; the
    packages' loggers are restored afterwards."""
    caplog.set_level(logging.WARNING)
    pkg = logging.getLogger("generator")
    before = (pkg.level, pkg.propagate, list(pkg.handlers))
    log = logging.getLogger("generator.runs.closeout")
    with run_log(tmp_path):
        log.info("a milestone")
        log.warning("a warning")
    assert (pkg.level, pkg.propagate, list(pkg.handlers)) == before
    assert [r.getMessage() for r in caplog.records] == ["a warning"]
    text = (tmp_path / "run.log").read_text()
    assert "INFO generator.runs.closeout: a milestone" in text and "WARNING generator.runs.closeout: a warning" in text


def test_a_url_run_folder_gets_its_log_uploaded_and_appended(tmp_path):
    pytest.importorskip("fsspec")
    url = "memory://synthgen-run-log-test/run"
    log = logging.getLogger("generator.runs.closeout")
    with run_log(url):
        log.warning("first session")
    with pytest.raises(ValueError):
        with run_log(url):
            log.warning("second session")
            raise ValueError("boom")
    from generator.core import storage

    text = storage.read_bytes(url + "/run.log").decode()
    assert text.index("first session") < text.index("second session") < text.index("ValueError: boom")


def _cli_run(proj, run, monkeypatch, *opts):
    monkeypatch.setattr("generator.engine.executors.local.make_backend", empty_fake)
    return CliRunner().invoke(main, [*opts, "run", str(proj / "spec.yaml"), "--out", str(run), "--limit", "4"])


def test_the_cli_prints_the_warning_once_as_before_and_the_log_holds_it(proj, tmp_path, monkeypatch):
    run = tmp_path / "run"
    res = _cli_run(proj, run, monkeypatch)
    assert res.exit_code == 0, res.output
    flagged = [x for x in res.stderr.splitlines() if FLAGGED in x]
    assert flagged == ["note: 4 records were flagged ({'empty': 4}); they stay in the run with their status and "
                       "are skipped by exports."]
    assert "info:" not in res.stderr  # warnings only by default
    assert sum(FLAGGED in x for x in entries((run / "run.log").read_text())) == 1


@pytest.mark.parametrize("opts, info, debug", [(("-v",), True, False), (("-vv",), True, True),
                                               (("--log-level", "debug"), True, True),
                                               (("--log-level", "error"), False, False)])
def test_log_level_and_v_set_what_reaches_stderr(proj, tmp_path, monkeypatch, opts, info, debug):
    run = tmp_path / "run"
    res = _cli_run(proj, run, monkeypatch, *opts)
    assert res.exit_code == 0, res.output
    assert ("info: start: " in res.stderr) == info
    assert ("debug: " in res.stderr) == debug
    assert (FLAGGED in res.stderr) == (opts != ("--log-level", "error"))
    # the file holds the milestones whatever the terminal showed
    assert "INFO generator.engine.runner: start: " in (run / "run.log").read_text()
    # and the level lasts for one invocation only
    again = CliRunner().invoke(main, ["validate", str(proj / "spec.yaml")])
    assert again.exit_code == 0 and "info:" not in again.stderr


def test_log_level_is_checked():
    res = CliRunner().invoke(main, ["--log-level", "loud", "validate", "x.yaml"])
    assert res.exit_code == 2 and "loud" in res.stderr


def test_a_rounds_run_logs_every_round(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"rounds": "{count: 2, budget: 8}", "templates": "[{template: qa}]"})
    run = tmp_path / "run"
    generator.run(spec, out=run, executor=LocalExecutor(backend_factory=empty_fake))
    lines = entries((run / "run.log").read_text())
    assert sum("INFO generator.engine.runner: start: " in x for x in lines) == 2  # one per round
    assert [x for x in lines if FLAGGED in x and " WARNING " in x]
