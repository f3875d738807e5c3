"""Usage and cost while and after a run: the ledger per session (calls, cache hits, tokens, busy
time), the run summary's usage and cost rows, the manifest's `usage`, the live cost column and its
projection. The fake backend stands in for the model (control flow only)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from generator.cli.live_cost import LiveCost
from generator.cli.main import main
from generator.config.spec import load_spec
from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.export.usage import compute_usage, session_totals

PRICE = {"models.0.price.input_per_mtok": "2.5", "models.0.price.output_per_mtok": "10"}


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr("generator.engine.executors.local.make_backend", lambda cfg, **_: backend)
    return backend


def _cli_run(proj, out, *sets: str):
    args = ["run", str(proj / "spec.yaml"), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_summary_and_manifest_show_usage_and_cost_over_sessions(proj, tmp_path, fake):
    out = tmp_path / "run"
    price = [f"{k}={v}" for k, v in PRICE.items()]
    first = _cli_run(proj, out, "generations_per_topic=2", *price)
    assert first.exit_code == 0, first.output
    calls_first = len(fake.calls)
    m1 = json.loads((out / "manifest.json").read_text())
    u1 = m1["usage"]
    assert u1["sessions"] == 1 and u1["this_session"]["total"]["requests"] == calls_first == u1["total"]["requests"]
    cost1 = u1["total"]["prompt_tokens"] * 2.5e-6 + u1["total"]["completion_tokens"] * 1e-5
    assert u1["total"]["cost"] == pytest.approx(cost1)
    assert "cost" in first.output and "this run" in first.output
    # more records into the same folder: a second session, summed with the first
    second = _cli_run(proj, out, "generations_per_topic=3", *price)
    assert second.exit_code == 0, second.output
    u2 = json.loads((out / "manifest.json").read_text())["usage"]
    assert u2["sessions"] == 2
    assert u2["this_session"]["total"]["requests"] == len(fake.calls) - calls_first > 0
    assert u2["total"]["requests"] == len(fake.calls)
    assert u2["total"]["cost"] == pytest.approx(u2["total"]["prompt_tokens"] * 2.5e-6
                                                + u2["total"]["completion_tokens"] * 1e-5)
    assert "all 2 run(s) into the folder" in second.output
    # the usage command shows sessions, hits and busy throughput
    res = CliRunner().invoke(main, ["usage", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and "session" in res.output and "hits" in res.output, res.output
    # and so does `report`, for a plain run too
    from generator.cli.report import report

    rep = CliRunner().invoke(report, [str(out)], catch_exceptions=False)
    assert rep.exit_code == 0 and "usage of" in rep.output and f"{u2['total']['requests']:,}" in rep.output


def test_cache_hits_are_counted_for_the_session_that_replays(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "2"})
    run = tmp_path / "run"
    b = FakeBackend()
    run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: b), score=False)
    # drop the written shards: a rerun must rebuild them from the cache alone
    for f in (run / "generations").glob("*.parquet"):
        f.unlink()
    again = FakeBackend()
    res = run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: again), score=False)
    assert not again.calls and res.generated
    u = compute_usage(run)
    first, second = u["sessions"]
    assert second["total"]["requests"] == 0 and second["total"]["cache_hits"] == first["total"]["requests"]
    assert session_totals(run, second["session"])[spec.models[0].name]["cache_hits"] == len(b.calls)


def test_usage_of_an_unfinished_run_projects_the_rest(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "2", "run.shard_size": "1", **PRICE})
    run = tmp_path / "run"

    class Stop(BaseException):
        pass

    class Half(FakeBackend):
        def generate(self, requests, on_result=None):
            for res in super().generate(requests, on_result):
                if len(self.calls) > 3:
                    raise Stop()
                yield res

    half = Half()
    with pytest.raises(Stop):
        run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: half), score=False)
    u = compute_usage(run)
    p = u["progress"]
    assert p is not None and p["records_answered"] == 3 and p["planned"] > 3
    assert p["projected"]["requests"] == round(3 * p["planned"] / 3)
    assert p["projected"]["cost"] == pytest.approx(u["total"]["cost"] * p["planned"] / 3)


def test_live_cost_reads_the_ledger_and_projects(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "2", **PRICE})
    run = tmp_path / "run"
    b = FakeBackend()
    run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: b), score=False)
    u = compute_usage(run)
    [s] = u["sessions"]
    prices = {m.name: m.price.model_dump() for m in spec.models}
    live = LiveCost(run, s["session"], prices, pending=2 * s["total"]["requests"], every=0)
    assert live.before == 0
    text = live.text(done=s["total"]["requests"])  # half the records done: the projection doubles it
    from generator.export.usage import money

    assert text == f"cost {money(u['total']['cost'])} so far · ≈{money(2 * u['total']['cost'])} at this rate"
    assert LiveCost(run, s["session"], {m: None for m in prices}, pending=4).text(1) == ""  # no price, no column


@pytest.mark.parametrize("content", ["not json", "[1, 2]", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")])
def test_a_damaged_manifest_or_cache_is_one_line_naming_the_file(proj, tmp_path, content):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "1"})
    run = tmp_path / "run"
    b = FakeBackend()
    run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: b), score=False)
    # a published answers file that is not Parquet: one line naming it
    published = sorted((run / "answers").glob("*.parquet"))
    assert published
    published[0].write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["usage", str(run)])
    assert res.exit_code == 2 and published[0].name in res.output and "\n" not in res.output.strip(), res.output
    # an old-style cache that is not SQLite, and no published answers: usage falls back to the
    # generation rows and says why
    import shutil

    shutil.rmtree(run / "answers")
    (run / "cache.sqlite").write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["usage", str(run)])
    assert res.exit_code == 0 and "cache.sqlite could not be read" in res.output, res.output
    (run / "manifest.json").write_bytes(content.encode("latin-1"))
    for args in (["usage", str(run)], ["run", str(proj / "spec.yaml"), "--out", str(run)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert "\n" not in line and "manifest.json" in line and "Traceback" not in line
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 2 and "manifest.json" in res.output


def test_progress_never_counts_past_the_plan_when_answers_are_retried(proj, tmp_path, monkeypatch):
    class Reporting(FakeBackend):
        """Reports each finished request, as the vLLM backends do through `on_finished`."""

        on_finished = None

        def _one(self, r, on_result):
            res = super()._one(r, on_result)
            self.on_finished(1)
            return res

    fake = Reporting(script={"*": ["", "  ", ""]})  # three empty answers: three retries

    def factory(cfg, on_finished=None, **_):
        fake.on_finished = on_finished
        return fake

    monkeypatch.setattr("generator.engine.executors.local.make_backend", factory)
    res = _cli_run(proj, tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert len(fake.calls) == 13
    bars = [line for line in res.output.splitlines() if "generating" in line]
    assert bars and "10/10" in bars[-1], bars
    assert not any(f"{n}/10" in line for line in bars for n in (11, 12, 13)), bars
