"""The engine's threads: the verify-function runner is made once however many check workers ask
for it at once, and closed with the checks; a stream thread that does not end when its feed is
closed is named in a warning instead of hanging the run's end."""
from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

from generator.engine.pipeline import checks as checks_mod
from generator.engine.pipeline.checks import CheckRunner
from generator.engine.pipeline.scheduler import PipelineScheduler
from generator.testing.fake import FakeBackend


class CountingRunner:
    """Stands in for verify.FunctionRunner: slow to make (so racing threads overlap), counts
    how many were made and closed."""
    made: list["CountingRunner"] = []

    def __init__(self, base_dir):
        time.sleep(0.05)
        self.closed = False
        CountingRunner.made.append(self)

    def close(self) -> None:
        self.closed = True


def test_many_threads_asking_at_once_get_one_runner_closed_at_close(monkeypatch, tmp_path):
    monkeypatch.setattr(checks_mod.verify, "FunctionRunner", CountingRunner)
    CountingRunner.made = []
    runner = CheckRunner(SimpleNamespace(nodes={}), SimpleNamespace(spec=SimpleNamespace(base_dir=tmp_path)), None, 2,
                         post=print, live=print, reject=print, advance=print)
    start = threading.Barrier(16)
    got = []

    def ask():
        start.wait()
        got.append(runner.function_runner())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(CountingRunner.made) == 1 and all(r is CountingRunner.made[0] for r in got) and len(got) == 16
    runner.close()
    assert all(r.closed for r in CountingRunner.made)


def test_a_runner_the_caller_gave_is_the_callers_to_close(tmp_path):
    given = CountingRunner(tmp_path)
    runner = CheckRunner(SimpleNamespace(nodes={}), SimpleNamespace(spec=SimpleNamespace(base_dir=tmp_path)), given, 1,
                         post=print, live=print, reject=print, advance=print)
    assert runner.function_runner() is given
    runner.close()
    assert not given.closed


def test_a_stream_thread_that_does_not_end_is_named_not_waited_for(proj, caplog, monkeypatch):
    """The backend answers everything, then ignores its closed feed; the run still ends, within
    the join timeout, and says which thread it left."""
    from generator.config.spec import load_spec
    from generator.engine.pipeline.execute import answer_rows
    from generator.engine.planner import resolve_spec

    release = threading.Event()

    class Stubborn(FakeBackend):
        def stream(self, feed, on_result=None):
            yield from super().stream(feed, on_result)
            release.wait(30)  # past the end of its feed: a stream that never returns

    monkeypatch.setattr(PipelineScheduler, "JOIN_TIMEOUT_S", 0.2)
    rows = [{"id": f"rec{i}", "seed": i, "messages": [{"role": "user", "content": f"write {i}"}], "temperature": 0.8,
             "top_p": 0.95, "max_tokens": 16, "template": "t", "model": "fake", "structured": False, "topic_id": "t"}
            for i in range(3)]
    final = []
    t0 = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="generator.engine.pipeline.scheduler"):
            answer_rows(resolve_spec(load_spec(proj / "spec.yaml")), rows, {"fake": Stubborn(model="fake")},
                        final.append)
    finally:
        release.set()
    assert time.monotonic() - t0 < 10 and len(final) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "stream thread stream-fake did not end" in warned[0]
