"""`backend: openai` against a fleet of real servers on 127.0.0.1 (tests/fleet_server.py): load
spread, adaptive windows, faults, a server killed mid-run, the whole fleet down."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from generator.core.backend import Request, RequestFeed, Sampling
from generator.core.errors import BackendError
from helpers import importorskip_ci

importorskip_ci("aiohttp")

from fleet_server import Fleet, Sim  # noqa: E402
from generator.engine.backends.openai_http import OpenAIBackend  # noqa: E402


# a stalled dispatch must fail here, not hang the suite
pytestmark = pytest.mark.timeout(120)


def _reqs(n: int, max_tokens: int = 4) -> list[Request]:
    return [Request(id=f"r{i}#1", messages=({"role": "user", "content": f"question {i}"},),
                    sampling=Sampling(max_tokens=max_tokens)) for i in range(n)]


def _backend(fleet: Fleet, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.02)
    return OpenAIBackend("sim", fleet.urls, **kw)


def _exactly_once(results, n: int) -> None:
    counts = Counter(r.id for r in results)
    assert len(results) == n and set(counts.values()) == {1}, counts.most_common(3)
    assert set(counts) == {f"r{i}#1" for i in range(n)}


def test_requests_spread_over_the_fleet_and_are_counted_per_endpoint():
    with Fleet(3, latency=0.02) as fleet:
        b = _backend(fleet)
        out = list(b.generate(_reqs(200)))
    _exactly_once(out, 200)
    assert all(r.error is None and r.completion_tokens == 4 for r in out)
    served = [s.stats["answered"] for s in fleet.sims]
    assert sum(served) == 200 and min(served) >= 40, served  # least-loaded: no server starves
    eps = b.describe()["endpoints"]
    assert [e["url"] for e in eps] == fleet.urls
    assert [e["answered"] for e in eps] == served
    assert all(e["completion_tokens"] == 4 * e["answered"] and e["state"] == "up" for e in eps)


def test_window_settles_near_each_servers_capacity_without_tuning():
    """Servers answering 429 above 4 and 12 requests at once: each endpoint's window finds that
    capacity by itself (concurrency 64 is only the ceiling): the servers stay nearly full while
    few requests are turned away."""
    sims = [Sim(latency=0.1, limit=4), Sim(latency=0.1, limit=12)]
    with Fleet(sims=sims) as fleet:
        b = _backend(fleet, concurrency=64)
        out = list(b.generate(_reqs(400)))
    _exactly_once(out, 400)
    assert all(r.error is None for r in out)
    small, big = b.describe()["endpoints"]
    for sim, ep, cap in ((sims[0], small, 4), (sims[1], big, 12)):
        st = sim.stats
        occupancy = st["live_s"] / (st["last_at"] - st["first_at"])
        assert occupancy >= 0.6 * cap, (cap, occupancy)  # kept near its capacity, not below
        assert 0.5 * cap <= ep["window"] <= 2.5 * cap, (cap, ep)  # the window sits near it, far below 64
    assert big["answered"] > 2 * small["answered"]  # work follows capacity
    rejected = small["status_429"] + big["status_429"]
    assert rejected < 0.15 * 400, rejected  # settled: it does not keep hammering


def test_503s_and_dropped_connections_are_retried_elsewhere():
    sims = [Sim(latency=0.01, fail_503=6, drop=2), Sim(latency=0.01)]
    with Fleet(sims=sims) as fleet:
        b = _backend(fleet)
        out = list(b.generate(_reqs(120)))
    _exactly_once(out, 120)
    assert all(r.error is None for r in out)
    assert sims[0].stats["status_503"] == 6 and sims[0].stats["dropped"] == 2
    flaky = b.describe()["endpoints"][0]
    assert flaky["status_5xx"] == 6 and flaky["connection_errors"] == 2
    assert b.stats["retries"] == 8


def test_requests_relaunched_on_an_endpoint_that_goes_down_before_they_start_are_resent():
    """The kill race, made deterministic on a mock transport: endpoint A's three requests fail
    together (connection reset). The first two failures put their requests straight back on A
    (still up, now least loaded) as tasks not yet started; the third failure takes A down and
    cancels those tasks. A task cancelled before its first step never runs its body, so the
    two requests must be re-sent from the task's completion, not from inside the coroutine."""
    import asyncio
    import threading

    import httpx

    state = {"a": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            if "gate" not in state:  # created in the backend's loop, on first use
                state["gate"] = asyncio.Event()
            state["a"] += 1
            if state["a"] == 3:
                state["gate"].set()
            await state["gate"].wait()  # the first three land together, then every call fails
            raise httpx.ReadError("connection reset by peer", request=request)
        await asyncio.sleep(0.05)  # B stays full while A fails
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    b = OpenAIBackend("sim", ["http://a/v1", "http://b/v1"], check=False, concurrency=3, backoff=0.02,
                      transport=httpx.MockTransport(handler))
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(b.generate(_reqs(6))), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), f"stream stalled with {len(out)} of 6 results: a request was never re-sent"
    _exactly_once(out, 6)
    assert all(r.error is None for r in out)
    a, bb = b.describe()["endpoints"]
    assert a["state"] == "down" and a["times_down"] == 1 and a["answered"] == 0 and bb["answered"] == 6
    assert a["redispatched"] >= 2  # the two cancelled before they started, re-sent to B


def test_a_server_killed_mid_run_loses_and_duplicates_nothing():
    with Fleet(3, latency=0.05) as fleet:
        b = _backend(fleet)
        feed = RequestFeed(_reqs(200))
        out = []
        for res in b.stream(feed):
            out.append(res)
            if len(out) == 30:
                # killed while it holds requests (under load it may briefly hold none)
                in_flight_on_dead = fleet.kill(0, busy=True)
                # the stream keeps taking new requests while others are in flight
                feed.put_many([Request(id=f"r{i}#1", messages=({"role": "user", "content": f"q {i}"},),
                                       sampling=Sampling(max_tokens=4)) for i in range(200, 260)])
                feed.close()
    _exactly_once(out, 260)
    assert all(r.error is None for r in out), [r.error for r in out if r.error][:3]
    dead = b.describe()["endpoints"][0]
    assert dead["times_down"] >= 1 and dead["state"] == "down"
    assert in_flight_on_dead > 0 and dead["redispatched"] + dead["connection_errors"] >= in_flight_on_dead
    alive = sum(s.stats["answered"] for s in fleet.sims[1:])
    assert alive >= 260 - fleet.sims[0].stats["answered"]


def test_an_endpoint_down_at_start_is_skipped_and_probed():
    with Fleet(2, latency=0.01) as fleet:
        fleet.kill(1)
        b = _backend(fleet)  # the start-up check finds one endpoint answering: enough
        out = list(b.generate(_reqs(50)))
    _exactly_once(out, 50)
    up, down = b.describe()["endpoints"]
    assert up["answered"] == 50 and down["state"] == "down" and down["answered"] == 0


def test_whole_fleet_down_is_one_line_naming_every_endpoint():
    with Fleet(2, latency=0.01) as fleet:
        b = _backend(fleet, max_retries=2, backoff=0.01)
        list(b.generate(_reqs(5)))
        fleet.kill(0)
        fleet.kill(1)
        t0 = time.time()
        with pytest.raises(BackendError) as err:
            list(b.generate(_reqs(20)))
    msg = str(err.value)
    assert "\n" not in msg and all(u in msg for u in fleet.urls) and "start the servers" in msg, msg
    assert time.time() - t0 < 8


def test_all_down_at_start_names_every_endpoint():
    with Fleet(2) as fleet:
        fleet.kill(0)
        fleet.kill(1)
        with pytest.raises(BackendError) as err:
            _backend(fleet, max_retries=1, backoff=0.01)
    msg = str(err.value)
    assert "\n" not in msg and all(u in msg for u in fleet.urls) and "start the servers" in msg, msg


def test_credentials_in_fleet_urls_stay_out_of_describe():
    with Fleet(2, latency=0.0) as fleet:
        urls = [u.replace("http://", "http://alice:hunter2@") for u in fleet.urls]
        b = OpenAIBackend("sim", urls, check=False)
        list(b.generate(_reqs(10)))
    text = json.dumps(b.describe()) + repr(b)
    assert "hunter2" not in text and "alice" not in text
    assert sum(e["answered"] for e in b.describe()["endpoints"]) == 10


FLEET_SPEC = """
name: fleet
topics:
  - items: [Fractions, Decimals, Percentages]
generations_per_topic: 8
templates:
  - template: math/word_problem
personas: {file: core, sample: 10}
models:
  - name: sim
    backend: openai
    base_url: URLS
    concurrency: 16
sampling: {max_tokens: 16}
run: {shard_size: 8}
"""


def test_spec_fleet_run_reports_each_endpoint_and_keeps_secrets_out(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from generator import load_spec, run

    with Fleet(2, latency=0.01) as fleet:
        urls = [u.replace("http://", "http://bob:s3cr3tpw@") for u in fleet.urls]
        (tmp_path / "spec.yaml").write_text(FLEET_SPEC.replace("URLS", json.dumps(urls)))
        res = run(load_spec(tmp_path / "spec.yaml"), out=tmp_path / "run", score=False)
        (tmp_path / "spec2.yaml").write_text(FLEET_SPEC.replace("URLS", json.dumps(urls)).replace("fleet", "fleet2"))
        synthgen = Path(sys.executable).with_name("synthgen")
        cli = subprocess.run([str(synthgen), "run", str(tmp_path / "spec2.yaml"), "--out", str(tmp_path / "run2")],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert res.generated == 24
    assert cli.returncode == 0, cli.stderr[-2000:]
    summary = [ln for ln in cli.stdout.splitlines() if "127.0.0.1" in ln]
    assert len(summary) == 2 and all("requests" in ln and "errors" in ln for ln in summary), cli.stdout
    assert "s3cr3tpw" not in cli.stdout + cli.stderr
    eps = json.loads((tmp_path / "run" / "manifest.json").read_text())["models"]["sim"]["endpoints"]
    assert [e["url"] for e in eps] == fleet.urls  # user:password dropped
    assert sum(e["answered"] for e in eps) == 24 and all(e["answered"] > 0 and e["ceiling"] == 16 for e in eps)
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert b"s3cr3tpw" not in f.read_bytes(), f
    proc = subprocess.run([str(synthgen), "usage", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    assert "endpoints (latest session)" in proc.stdout and all(u in proc.stdout for u in fleet.urls)
    rows = [ln for ln in proc.stdout.splitlines() if "127.0.0.1" in ln]
    assert sorted(int(ln.split()[2]) for ln in rows) == sorted(e["requests"] for e in eps)


@pytest.mark.parametrize("value, msg", [("[]", "an empty list"),
                                        ("[http://a:1/v1, http://a:1/v1/]", "the same URL twice"),
                                        ("[http://a:1/v1, 'ftp://b/v1']", "http(s) URL")])
def test_bad_fleet_urls_are_one_line(tmp_path, value, msg):
    from generator.config.spec import load_spec
    from generator.core.errors import SpecError

    (tmp_path / "s.yaml").write_text(FLEET_SPEC.replace("URLS", value))
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "s.yaml")
    assert msg in str(err.value) and "base_url" in str(err.value) and "\n" not in str(err.value)


# -- the hedged tail, on a mock transport: endpoint a holds request r0 (the tail), b is idle

def _answer(host: str) -> "httpx.Response":
    import httpx

    return httpx.Response(200, json={"choices": [{"message": {"content": f"ok from {host}"}, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 3}})


def _hedged(monkeypatch, r0, n: int = 12, **kw):
    """Run `n` requests on endpoints a and b; `r0(host, state)` serves request r0 (the others take
    10 ms), state["seen"] lists each attempt of r0 as (host, outcome). Looks every 50 ms, settles in
    0.1 s, so a hedge goes out within about 0.2 s."""
    import asyncio
    import threading

    import httpx

    import generator.engine.backends.fleet_hedge as fh

    monkeypatch.setattr(fh, "HEDGE_TICK_S", 0.05)
    monkeypatch.setattr(fh, "HEDGE_SETTLE_S", 0.1)
    state: dict = {"seen": []}

    async def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if json.loads(request.content)["messages"][0]["content"] != "question 0":
            await asyncio.sleep(0.01)
            return _answer(host)
        try:
            resp = await r0(host, state)
        except asyncio.CancelledError:
            state["seen"].append((host, "cancelled"))
            raise
        except httpx.HTTPError:
            state["seen"].append((host, "failed"))
            raise
        state["seen"].append((host, resp.status_code))
        return resp

    kw.setdefault("backoff", 0.02)
    b = OpenAIBackend("sim", ["http://a/v1", "http://b/v1"], check=False, transport=httpx.MockTransport(handler), **kw)
    out: list = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: out.extend(b.generate(_reqs(n))), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), f"stream stalled with {len(out)} of {n} results"
    _exactly_once(out, n)
    a, bb = b.describe()["endpoints"]
    return out, state, a, bb, b, time.monotonic() - t0


def _r0(out):
    return next(r for r in out if r.id == "r0#1")


async def _hang(host, state):
    import asyncio

    await asyncio.sleep(60)


def test_a_request_stuck_on_one_server_is_answered_by_a_hedge(monkeypatch):
    out, state, a, bb, b, took = _hedged(monkeypatch, lambda host, st: _hang(host, st) if host == "a" else _ok(host))
    assert _r0(out).text == "ok from b" and all(r.error is None for r in out)
    assert b.stats["hedges"] == 1 and b.stats["hedges_won"] == 1
    assert (bb["hedges"], bb["hedges_won"], a["hedges"]) == (1, 1, 0)
    assert state["seen"] == [("b", 200), ("a", "cancelled")]  # the stuck original is closed, not waited for
    assert took < 10  # not the 60 s the stuck server would take
    # usage counts the request once: the winner's answer
    assert a["answered"] + bb["answered"] == 12 and a["completion_tokens"] + bb["completion_tokens"] == 36
    assert b.stats["requests"] == 12 and a["requests"] + bb["requests"] == 13  # 12 requests, one hedge


async def _ok(host, delay: float = 0.0):
    import asyncio

    await asyncio.sleep(delay)
    return _answer(host)


def test_the_original_answering_first_cancels_the_hedge_which_is_not_counted(monkeypatch):
    # also the stream's last answer arrives with the hedge still in flight: it ends at once
    out, state, a, bb, b, took = _hedged(monkeypatch, lambda host, st: _ok(host, 0.8) if host == "a" else _hang(host, st))
    assert _r0(out).text == "ok from a"
    assert b.stats["hedges"] == 1 and b.stats["hedges_won"] == 0 and bb["hedges"] == 1 and bb["hedges_won"] == 0
    assert state["seen"] == [("a", 200), ("b", "cancelled")]
    assert a["answered"] + bb["answered"] == 12 and a["completion_tokens"] + bb["completion_tokens"] == 36
    assert bb["errors"] == 0 and took < 10


def test_hedge_and_original_both_failing_give_one_error_after_the_usual_retries(monkeypatch):
    import httpx

    async def fail(host, state):
        import asyncio

        await asyncio.sleep(0.8 if host == "a" else 0.0)
        return httpx.Response(500, json={"error": {"message": "engine died"}})

    out, state, a, bb, b, _ = _hedged(monkeypatch, fail, max_retries=1)
    r0 = _r0(out)
    assert r0.finish_reason == "error" and "HTTP 500 after 1 retries" in r0.error and "engine died" in r0.error
    assert all(r.error is None for r in out if r.id != "r0#1")
    # the hedge's failure is dropped while the original runs; the original's failure is retried
    # once (max_retries), unhedged, and that failure is the result
    assert b.stats["hedges"] == 1 and b.stats["retries"] == 1 and b.stats["status_5xx"] == 3
    assert len(state["seen"]) == 3 and all(outcome == 500 for _, outcome in state["seen"])


def test_an_endpoint_dying_with_a_hedge_in_flight_loses_and_duplicates_nothing(monkeypatch):
    import asyncio

    import httpx

    async def serve(host, state):
        if host == "a":  # the original's server dies while the hedge runs on b
            await asyncio.sleep(0.5)
            raise httpx.ConnectError("connection refused")
        await asyncio.sleep(1.0)
        return _answer(host)

    out, state, a, bb, b, _ = _hedged(monkeypatch, serve)
    assert _r0(out).text == "ok from b" and all(r.error is None for r in out)
    assert a["state"] == "down" and a["times_down"] == 1
    assert a["redispatched"] == 0  # its twin carried the request on: nothing re-sent
    assert state["seen"] == [("a", "failed"), ("b", 200)]
    assert b.stats["hedges"] == 1 and b.stats["hedges_won"] == 1


def test_a_consumer_stopping_with_a_hedge_in_flight_cancels_both_and_the_backend_runs_again(monkeypatch):
    import asyncio
    import threading

    import httpx

    import generator.engine.backends.fleet_hedge as fh

    monkeypatch.setattr(fh, "HEDGE_TICK_S", 0.05)
    monkeypatch.setattr(fh, "HEDGE_SETTLE_S", 0.1)
    seen: list = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["messages"][0]["content"] != "question 0":
            await asyncio.sleep(0.01)
            return _answer(request.url.host)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(request.url.host)
            raise

    b = OpenAIBackend("sim", ["http://a/v1", "http://b/v1"], check=False, transport=httpx.MockTransport(handler))
    stream = b.generate(_reqs(12))
    got = [next(stream) for _ in range(11)]
    deadline = time.monotonic() + 10
    while b.stats["hedges"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.stats["hedges"] == 1
    closer = threading.Thread(target=stream.close, daemon=True)
    t0 = time.monotonic()
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and time.monotonic() - t0 < 5
    assert sorted(seen) == ["a", "b"]  # both attempts of r0 closed
    assert "r0#1" not in {r.id for r in got}
    assert all(e.in_flight == 0 and not e.tasks for e in b.endpoints)
    again = list(b.generate(_reqs(4)[1:]))
    assert sorted(r.id for r in again) == ["r1#1", "r2#1", "r3#1"] and all(r.error is None for r in again)


def test_hedge_off_waits_for_the_stuck_original(monkeypatch):
    out, state, a, bb, b, took = _hedged(
        monkeypatch, lambda host, st: _ok(host, 1.0) if host == "a" else _hang(host, st), hedge=False)
    assert _r0(out).text == "ok from a" and took >= 1.0
    assert b.stats["hedges"] == 0 and state["seen"] == [("a", 200)] and b.describe()["hedge"] is False


def test_hedge_counts_show_in_the_summary_and_the_usage_table():
    """A manifest's per-endpoint hedges reach `synthgen run`'s summary line and `synthgen usage`'s
    table; an endpoint without hedges shows none."""
    from rich.console import Console
    from rich.table import Table

    from generator.cli.export import endpoints_table
    from generator.cli.main import _endpoint_rows
    from generator.export.usage import endpoints

    manifest = {"models": {"sim": {"endpoints": [
        {"url": "http://127.0.0.1:1/v1", "requests": 40, "answered": 38, "errors": 0, "hedges": 5, "hedges_won": 3},
        {"url": "http://127.0.0.1:2/v1", "requests": 30, "answered": 30, "errors": 1}]}}}
    rows = endpoints(manifest)
    assert [(r["hedges"], r["hedges_won"]) for r in rows] == [(5, 3), (0, 0)]

    def text(table) -> str:
        console = Console(width=250, record=True)
        console.print(table)
        return console.export_text()

    summary = Table()
    summary.add_column("k")
    summary.add_column("v")
    _endpoint_rows(summary, manifest)
    lines = [ln for ln in text(summary).splitlines() if "127.0.0.1" in ln]
    assert "5 hedges (3 answered first)" in lines[0] and "hedges" not in lines[1]
    usage = [ln for ln in text(endpoints_table(rows)).splitlines() if "127.0.0.1" in ln]
    assert "5 (3 won)" in usage[0] and "won" not in usage[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_vllm_server_beside_faulty_test_servers_one_killed_mid_run(vllm_server):
    """A fleet of a real vLLM CPU server and two test servers (one answering 429 over 4 requests at
    once and dropping connections, one slow), the slow one killed mid-run: every request is answered
    exactly once, the real server takes its share, the dead one is drained."""
    sims = [Sim(latency=0.05, limit=4, drop=3, model="smollm2-135m"), Sim(latency=0.3, model="smollm2-135m")]
    with Fleet(sims=sims) as fleet:
        b = OpenAIBackend("smollm2-135m", [vllm_server, *fleet.urls], backoff=0.05, concurrency=8)
        feed = RequestFeed(_reqs(40, max_tokens=8))
        out = []
        for res in b.stream(feed):
            out.append(res)
            if len(out) == 10:
                fleet.kill(1)
                feed.put_many(_reqs(60, max_tokens=8)[40:])
                feed.close()
    _exactly_once(out, 60)
    assert all(r.error is None for r in out), [r.error for r in out if r.error][:3]
    real, faulty, dead = b.describe()["endpoints"]
    assert real["answered"] > 0 and real["errors"] == 0
    assert fleet.sims[0].stats["status_429"] + fleet.sims[0].stats["dropped"] > 0  # its faults were met
    assert dead["state"] == "down" and real["answered"] + faulty["answered"] + dead["answered"] == 60
