"""Fencing: a run that lost its run-folder lock stops before its next write, with one line (exit 2)
naming the run that holds the folder now, and nothing it would write after is visible.

Fast: the check itself on an in-memory object store (a replaced token refuses the next shard, answers
file, manifest; the heartbeat sees it and tells the run at once). With two real `synthgen run`
processes on the fake backend (tests/fake_synthgen.py): locally a stopped run keeps its folder (the
second is refused, the first then finishes); on the S3-compatible server (moto, slow) a run stopped
past the stale time loses the folder to a second run, which finishes, and the first, resumed,
exits 2 naming it, leaving the folder exactly as the second left it, with every record there."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from generator.core import storage
from generator.core.errors import LockLostError, RunFolderError
from generator.engine import run_lock
from generator.engine.run_folder import RunFolder
from helpers import S3_BUCKET, small_spec

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_synthgen.py"


def _foreign(where: str, pid: int = 4242, host: str = "other-host") -> dict:
    who = {"pid": pid, "host": host, "since": time.time(), "heartbeat": time.time(), "token": "f" * 16}
    storage.write_bytes_atomic(where, json.dumps(who).encode())
    return who


def _row(i: int) -> dict:
    return {"id": f"r{i}", "status": "ok", "text": "x"}


def test_a_replaced_token_refuses_every_next_write(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_LOCAL_CACHE", str(tmp_path / "local-cache"))  # the working copy it keeps
    url = f"memory://fence/{tmp_path.name}/run"
    folder = RunFolder(url)
    with folder.lock():
        folder.write_shard("part-000-00000.parquet", [_row(0)])
        folder.write_manifest({"name": "mine"})
        cache = folder.cache(session="s1")
        cache.put_many([("k1", {"id": "r1", "text": "a"})])
        cache.flush()
        published = storage.glob(storage.join(url, "answers"), "*.parquet")
        assert len(published) == 1
        _foreign(storage.join(url, ".lock"))  # another run took the folder over

        with pytest.raises(LockLostError) as lost:
            folder.write_shard("part-000-00001.parquet", [_row(1)])
        text = str(lost.value)
        assert "lost its lock" in text and "pid 4242 on host other-host" in text and "\n" not in text
        assert isinstance(lost.value, RunFolderError)  # the CLI's one line, exit 2
        with pytest.raises(LockLostError):
            folder.write_manifest({"name": "late"})
        cache.put_many([("k2", {"id": "r2", "text": "b"})])
        with pytest.raises(LockLostError):
            cache.flush()
        with pytest.raises(LockLostError):
            RunFolder(url).write_text("scores.json", "{}")  # another handle on the same folder: same fence
        with pytest.raises(LockLostError):  # the cache refuses at close too: its answers stay local
            cache.close()
    # nothing written after the loss is visible, and the taker's lock is left alone
    assert [storage.name_of(p) for p in storage.glob(storage.join(url, "generations"), "*.parquet")] == \
        ["part-000-00000.parquet"]
    assert json.loads(storage.read_bytes(storage.join(url, "manifest.json")))["name"] == "mine"
    assert storage.glob(storage.join(url, "answers"), "*.parquet") == published
    assert not storage.exists(storage.join(url, "scores.json"))
    assert json.loads(storage.read_bytes(storage.join(url, ".lock")))["token"] == "f" * 16
    assert run_lock.fence_of(url) is None  # released: a later run in this process starts clean


def test_the_heartbeat_marks_the_lock_lost_and_tells_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_LOCK_HEARTBEAT_S", "0.05")
    url = f"memory://fence/{tmp_path.name}/run"
    folder = RunFolder(url)
    told = threading.Event()
    seen: list[BaseException] = []
    with folder.lock():
        folder.on_lock_lost(lambda exc: (seen.append(exc), told.set()))
        time.sleep(0.2)
        folder.check_lock()  # beats in between: still ours
        assert not told.is_set()
        storage.remove(storage.join(url, ".lock"))  # gone (a taker that finished and released it)
        assert told.wait(5), "the heartbeat did not notice the lock was gone"
        assert isinstance(seen[0], LockLostError) and "lock object was removed" in str(seen[0])
        with pytest.raises(LockLostError):
            folder.write_manifest({})
    assert not storage.exists(storage.join(url, ".lock"))  # a lost lock is never written back


def test_the_manifest_names_its_writer_for_a_run_that_loses_the_lock_later(tmp_path):
    url = f"memory://fence/{tmp_path.name}/run"
    folder = RunFolder(url)
    with folder.lock():
        folder.write_manifest({"name": "x"})
        mine = json.loads(storage.read_bytes(storage.join(url, "manifest.json")))[run_lock.MANIFEST_KEY]
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
        fence = run_lock.fence_of(url)
        # another run wrote the manifest and has released the lock since
        storage.write_bytes_atomic(storage.join(url, "manifest.json"), json.dumps(
            {run_lock.MANIFEST_KEY: {"pid": 999, "host": "h2", "since": time.time()}}).encode())
        storage.remove(storage.join(url, ".lock"))
        with pytest.raises(LockLostError, match="pid 999 on host h2.*which has finished since"):
            fence.check()


def test_a_ray_actor_checks_its_writes_against_the_drivers_lock(tmp_path):
    """An actor holds no lock itself: it follows the driver's (`Job.lock`), token and all."""
    url = f"memory://fence/{tmp_path.name}/actor"
    driver = {"pid": 1, "host": "head", "since": time.time(), "token": "d" * 16}
    storage.write_bytes_atomic(storage.join(url, ".lock"), json.dumps(driver).encode())
    run_lock.follow(url, driver)  # stays registered, as in an actor: this folder is this test's own
    folder = RunFolder(url)
    folder.write_shard("part-000-00000.parquet", [_row(0)])
    _foreign(storage.join(url, ".lock"))
    with pytest.raises(LockLostError, match="pid 4242 on host other-host"):
        folder.write_shard("part-000-00001.parquet", [_row(1)])
    assert len(storage.glob(storage.join(url, "generations"), "*.parquet")) == 1


def test_a_local_folder_is_checked_cheaply_and_never_lost(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        fence = run_lock.fence_of(folder.path)
        assert fence is not None and fence.where is None  # no lock object to read: a flag
        folder.check_lock()
        folder.write_shard("part-000-00000.parquet", [_row(0)])
    folder.check_lock()  # no lock held here: nothing to check
    assert (tmp_path / "run" / "generations" / "part-000-00000.parquet").exists()


def test_lock_timings_come_from_the_environment(monkeypatch):
    assert run_lock.stale_s() == run_lock.LOCK_STALE_S and run_lock.heartbeat_s() == run_lock.LOCK_HEARTBEAT_S
    monkeypatch.setenv("SYNTHGEN_LOCK_STALE_S", "2.5")
    monkeypatch.setenv("SYNTHGEN_LOCK_HEARTBEAT_S", "0.5")
    assert run_lock.stale_s() == 2.5 and run_lock.heartbeat_s() == 0.5
    monkeypatch.setenv("SYNTHGEN_LOCK_STALE_S", "soon")
    with pytest.raises(RunFolderError, match="SYNTHGEN_LOCK_STALE_S='soon'"):
        run_lock.stale_s()


# -- two real processes

def _spec(tmp_path: Path, name: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(small_spec(name, 5, max_tokens=32, run="{shard_size: 2, window: 2}"))
    return spec


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHGEN_TEST_FAKE_DELAY": "0.1", "SYNTHGEN_PUBLISH_SECONDS": "0.2",
            "SYNTHGEN_LOCAL_CACHE": str(tmp_path / "local-cache"), **extra}


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            start_new_session=True)


def _keys(run) -> set[str]:
    from generator.core.run_layout import read_answers

    frame = read_answers(run, ["key"])
    return set() if frame is None else set(frame["key"].to_list())


def _wait(what, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not what():
        assert proc.poll() is None, f"the run ended too early:\n{log.read_text()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting:\n{log.read_text()[-2000:]}"
        time.sleep(0.05)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _all_records(run) -> None:
    from generator.core.run_layout import read_generation_files, read_plan

    ids = read_generation_files(run)["id"].to_list()
    assert sorted(ids) == sorted(read_plan(run)["id"].to_list()) and len(ids) == len(set(ids)) == 12


def test_a_stopped_local_run_keeps_its_folder(tmp_path):
    """Locally the file lock is held by the stopped process: the second run is refused, one line
    naming it, and the first, continued, finishes normally."""
    from generator.core.run_layout import generation_files

    run = tmp_path / "run"
    cmd = [sys.executable, str(FAKE), "run", str(_spec(tmp_path, "fence-local")), "--out", str(run)]
    log_a = tmp_path / "a.log"
    a = _start(cmd, _env(tmp_path, SYNTHGEN_TEST_FAKE_HOLD="4:5"), log_a)
    try:
        _wait(lambda: len(generation_files(run)) >= 2 and len(_keys(run)) >= 4, a, log_a)
        os.killpg(a.pid, signal.SIGSTOP)
        b = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
        assert b.returncode == 2, b.stderr[-2000:]
        [line] = _error_lines(b.stderr)
        assert "in use by another run" in line and f"pid {a.pid} on host {socket.gethostname()}" in line
        assert b.stderr.strip().splitlines()[-1] == line
        os.killpg(a.pid, signal.SIGCONT)
        assert a.wait(120) == 0, log_a.read_text()[-2000:]
    finally:
        _kill(a)
    _all_records(run)
    assert not _error_lines(log_a.read_text())


def _snapshot(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(prefix)}


@pytest.mark.slow  # starts a server
def test_a_run_stopped_past_the_stale_time_loses_the_bucket_and_stops(s3, tmp_path):
    """Run A is stopped (SIGSTOP) right after a heartbeat, with nothing else to write (the fake
    holds its next answer); past the stale time run B takes the folder over and finishes; A,
    continued, exits 2 with one line naming B, and the folder is exactly as B left it."""
    from generator.core.run_layout import generation_files, read_manifest

    prefix = f"{S3_BUCKET}/runs/fence-{tmp_path.name}"
    url = f"s3://{prefix}"
    cmd = [sys.executable, str(FAKE), "run", str(_spec(tmp_path, "fence-s3")), "--out", url]
    timing = {"SYNTHGEN_LOCK_STALE_S": "3", "SYNTHGEN_LOCK_HEARTBEAT_S": "1"}
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = _start(cmd, _env(tmp_path, SYNTHGEN_TEST_FAKE_HOLD="4:60", **timing), log_a)
    b = None
    lock = f"{prefix}/.lock"
    try:
        _wait(lambda: len(generation_files(url)) >= 2 and len(_keys(url)) >= 4, a, log_a)
        time.sleep(0.5)  # A now waits on its held answer: only its heartbeat writes
        beat = json.loads(s3.cat_file(lock))["heartbeat"]
        # stop A just after a heartbeat landed, so it is not paused between reading and rewriting its lock
        _wait(lambda: json.loads(s3.cat_file(lock))["heartbeat"] != beat, a, log_a, timeout=10)
        os.killpg(a.pid, signal.SIGSTOP)
        stopped_at = time.time()
        published_by_a = _keys(url)
        before = _snapshot(s3, prefix)
        time.sleep(max(0.0, json.loads(s3.cat_file(lock))["heartbeat"] + 3.5 - time.time()))

        b = _start(cmd, _env(tmp_path, **timing), log_b)
        assert b.wait(120) == 0, log_b.read_text()[-3000:]
        assert "taking over the lock" in log_b.read_text()
        after_b = _snapshot(s3, prefix)
        assert not s3.exists(lock)  # B released it

        os.killpg(a.pid, signal.SIGCONT)
        continued = time.time()
        assert a.wait(60) == 2, log_a.read_text()[-3000:]
        # told by its heartbeat, not by the held answer (60 s from its start)
        assert time.time() - continued < 20 and time.time() - stopped_at < 50
    finally:
        _kill(a)
        if b is not None:
            _kill(b)
    text = log_a.read_text()
    [line] = _error_lines(text)
    assert text.strip().splitlines()[-1] == line
    assert "lost its lock" in line and f"pid {b.pid} on host {socket.gethostname()}" in line
    # the folder is exactly as B left it: A wrote nothing after it lost the lock
    assert _snapshot(s3, prefix) == after_b
    manifest = read_manifest(url)
    assert manifest[run_lock.MANIFEST_KEY]["pid"] == b.pid
    assert json.loads(before[f"{prefix}/manifest.json"])["session"] != manifest["session"]
    assert after_b[f"{prefix}/plan.parquet"] == before[f"{prefix}/plan.parquet"]  # plan unchanged
    for name, data in before.items():  # A's shards and answers stay as they were
        if "/generations/" in name or "/answers/" in name:
            assert after_b[name] == data
    # nothing generated is lost: every record is there, and B replayed what A had published
    _all_records(url)
    from generator.core.run_layout import answer_files, read_answer_file

    paid_by_b = set()
    for f in answer_files(url):
        if f"{prefix}/answers/{storage.name_of(f)}" not in before:
            paid_by_b |= set(read_answer_file(f, ["key"])["key"].to_list())
    assert published_by_a and not paid_by_b & published_by_a
    assert _keys(url) == published_by_a | paid_by_b
    assert len(paid_by_b) == manifest["timings"][-1]["model_calls"]
