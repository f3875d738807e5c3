"""The request cache publishes what it answered into the run folder (answers/*.parquet, usage in
each file's metadata) and replays every writer's files on open; usage reads the published files
and an old-style cache.sqlite. Local folders, no model."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest

from generator.core.run_layout import ANSWERS, answer_files, answer_usage, published_usage, read_answers
from generator.engine.request_cache import RequestCache
from generator.engine.run_folder import RunFolder
from generator.export.usage import ledger


def _answer(i: int) -> dict:
    return {"id": f"rec{i}#1", "text": f"answer {i}", "prompt_tokens": 10, "completion_tokens": i,
            "finish_reason": "stop"}


def _put(cache: RequestCache, *ids: int) -> None:
    with cache.lock:  # counted and stored together, as the scheduler does
        for i in ids:
            cache.meter.answered("m", "generate", 10, i)
        cache.put_many([(f"k{i}", _answer(i)) for i in ids])


@pytest.fixture
def slow_timer(monkeypatch):
    monkeypatch.setenv("SYNTHGEN_PUBLISH_SECONDS", "3600")


def test_answers_are_published_by_count_and_at_close_with_their_usage(tmp_path, monkeypatch, slow_timer):
    monkeypatch.setenv("SYNTHGEN_PUBLISH_ANSWERS", "2")
    run = tmp_path / "run"
    cache = RunFolder(run).cache(session="s1")
    _put(cache, 1)
    assert answer_files(run) == []  # one answer: below the count, nothing published yet
    _put(cache, 2, 3)
    [first] = answer_files(run)
    assert first.name.startswith("s1-") and first.name.endswith("-000000.parquet")
    cache.meter.hit("m", "generate")
    cache.close()
    files = answer_files(run)
    assert len(files) == 2 and not list((run / ANSWERS).glob(".*"))  # no temp file left behind
    frame = read_answers(run, ["key", "value", "id", "prompt_tokens", "completion_tokens"])
    assert sorted(frame["key"].to_list()) == ["k1", "k2", "k3"]
    assert json.loads(frame.filter(frame["key"] == "k2")["value"][0])["text"] == "answer 2"
    # each file counts exactly the answers it holds (and the hit, which came after them)
    metas = [answer_usage(f) for f in files]
    assert [m["usage"][0][2] for m in metas] == [3, 0] and metas[1]["usage"][0][3] == 1
    usage, busy, started = published_usage(run)
    assert sum(r[3] for r in usage) == 3 and sum(r[7] for r in usage) == 1 + 2 + 3 and set(started) == {"s1"}
    assert busy and all(r[0] == "s1" and r[2] >= 0 for r in busy)


def test_a_timed_publish_needs_no_further_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_PUBLISH_SECONDS", "0.2")
    run = tmp_path / "run"
    cache = RunFolder(run).cache(session="s1")
    _put(cache, 1)
    deadline = time.time() + 10
    while not answer_files(run) and time.time() < deadline:
        time.sleep(0.05)
    assert read_answers(run, ["key"])["key"].to_list() == ["k1"]  # published by the timer alone
    cache.close()
    assert len(answer_files(run)) == 1  # nothing new to publish at close


def test_a_new_cache_replays_every_writers_answers_once(tmp_path, slow_timer):
    run = tmp_path / "run"
    a = RunFolder(run).cache(session="s1")
    _put(a, 1, 2)
    a.close()
    b = RunFolder(run).cache(session="s2")  # a resume, or a replacement worker
    assert set(b.get_many(["k1", "k2", "k9"])) == {"k1", "k2"} and b.get("k2")["text"] == "answer 2"
    c = RunFolder(run).cache(session="s3")  # another worker publishes while b is open
    _put(c, 3)
    c.close()
    assert b.get("k3") is None and b.replay() == 1 and b.get("k3")["text"] == "answer 3"
    assert b.replay() == 0  # files already imported are not read again
    b.close()
    assert len(answer_files(run)) == 2  # b answered nothing: replayed answers are not published again


def test_a_failed_publish_keeps_answers_and_usage_for_the_next(tmp_path, monkeypatch, slow_timer):
    import generator.engine.request_cache as rf

    run = tmp_path / "run"
    cache = RunFolder(run).cache(session="s1")
    _put(cache, 1)
    real = rf.write_atomic

    def broken(loc, fill, before=None):
        raise OSError("network down")

    monkeypatch.setattr(rf, "write_atomic", broken)
    with pytest.raises(OSError):
        cache.flush()
    monkeypatch.setattr(rf, "write_atomic", real)
    _put(cache, 2)
    cache.close()
    [only] = answer_files(run)
    assert sorted(read_answers(run, ["key"])["key"].to_list()) == ["k1", "k2"]
    assert sum(row[2] for row in answer_usage(only)["usage"]) == 2  # both answers, counted once each


def test_usage_and_replay_read_an_old_style_cache_sqlite(tmp_path, slow_timer):
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / "cache.sqlite")
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO results VALUES ('old1', ?)", (json.dumps(_answer(7)),))
    db.execute("CREATE TABLE usage (session TEXT, model TEXT, stage TEXT, requests INTEGER, cache_hits INTEGER, "
               "errors INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER)")
    db.execute("INSERT INTO usage VALUES ('old', 'm', 'generate', 1, 0, 0, 10, 7)")
    db.execute("CREATE TABLE busy (session TEXT, model TEXT, seconds REAL, first_at REAL, last_at REAL)")
    db.execute("CREATE TABLE sessions (session TEXT PRIMARY KEY, started REAL)")
    db.execute("INSERT INTO sessions VALUES ('old', 1.0)")
    db.commit()
    db.close()
    cache = RunFolder(run).cache(session="new")
    assert cache.get("old1")["text"] == "answer 7"  # paid before the upgrade: not paid again
    _put(cache, 1)
    cache.close()
    counts, _ = ledger(run)
    by = {r["session"]: r["requests"] for r in counts.iter_rows(named=True)}
    assert by == {"old": 1, "new": 1}


def test_answers_a_killed_process_never_published_are_salvaged_and_counted(tmp_path, monkeypatch):
    """A process SIGKILLed between storing answers and publishing them leaves its local working
    copy behind; the next process to open the run's cache on this machine publishes those answers
    under the dead session, counted, so the resume pays only for what was in flight."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    local = tmp_path / "local"
    monkeypatch.setenv("SYNTHGEN_LOCAL_CACHE", str(local))
    run = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(root)!r}); sys.path.insert(0, {str(root / 'tests')!r})
from generator.engine.run_folder import RunFolder
cache = RunFolder({str(run)!r}).cache(session="dead-session")
with cache.lock:
    for i in (1, 2, 3):
        cache.meter.answered("m", "generate", 10, i)
    cache.put_many([(f"k{{i}}", {{"id": f"rec{{i}}#1", "text": "a", "prompt_tokens": 10, "completion_tokens": i}},
                     "m", "generate") for i in (1, 2, 3)])
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "SYNTHGEN_PUBLISH_SECONDS": "3600", "SYNTHGEN_PUBLISH_ANSWERS": "1000"}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert answer_files(run) == [] and len(list(local.glob("synthgen-answers/*.sqlite"))) == 1

    cache = RunFolder(run).cache(session="resume")
    assert cache.get_many(["k1", "k2", "k3"]).keys() == {"k1", "k2", "k3"}
    [salvaged] = answer_files(run)
    assert salvaged.name.startswith("dead-session-salvage")
    usage, _, started = published_usage(run)
    assert [(r[0], r[1], r[2], r[3], r[7]) for r in usage] == [("dead-session", "m", "generate", 3, 1 + 2 + 3)]
    assert started["dead-session"] > 0
    # the leftover is gone: a second opener salvages nothing more
    assert not [p for p in (local / "synthgen-answers").glob("*.sqlite") if "dead-session" in p.name]
    assert RunFolder(run).cache(session="again").salvage() == 0 and len(answer_files(run)) == 1
    cache.close()


def test_a_live_process_working_copy_is_never_salvaged(tmp_path, monkeypatch, slow_timer):
    monkeypatch.setenv("SYNTHGEN_LOCAL_CACHE", str(tmp_path / "local"))
    run = tmp_path / "run"
    first = RunFolder(run).cache(session="s1")
    with first.lock:
        first.put_many([("k1", _answer(1), "m", "generate")])
    second = RunFolder(run).cache(session="s2")  # this process is alive: s1's copy is its own
    assert second.salvage() == 0 and answer_files(run) == []
    first.close()
    assert len(answer_files(run)) == 1
