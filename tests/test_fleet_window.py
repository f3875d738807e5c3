"""Each endpoint's window against simulated servers on 127.0.0.1 (tests/fleet_server.py) whose
answers take about a second: it reaches the server's capacity before the first answer lands (from
the server's /metrics, from an explicit `concurrency:`, and with neither), never passes its
ceiling, backs off on 429/503, and is cut back when a server that never says 429 only queues."""
from __future__ import annotations

import pytest

from generator.core.backend import Request, Sampling
from generator.engine.backends import fleet_metrics
from helpers import importorskip_ci

importorskip_ci("aiohttp")

from fleet_server import Fleet, Sim  # noqa: E402
from generator.engine.backends.openai_http import OpenAIBackend  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _reqs(n: int, max_tokens: int) -> list[Request]:
    return [Request(id=f"r{i}#1", messages=({"role": "user", "content": f"question {i}"},),
                    sampling=Sampling(max_tokens=max_tokens)) for i in range(n)]


def _run(fleet: Fleet, n: int, max_tokens: int, **kw):
    """Runs `n` requests; returns the results, the backend, and what the server held (running and
    queued) at the moment the first answer came back."""
    at_first: list[int] = []
    b = OpenAIBackend("sim", fleet.urls, backoff=0.02, **kw)
    out = list(b.generate(_reqs(n, max_tokens),
                          on_result=lambda r: at_first or at_first.append(fleet.sims[0].stats["max_live"])))
    assert len(out) == n and all(r.error is None for r in out)
    return out, b, at_first[0]


def test_metrics_page_is_parsed_for_each_server_kind():
    vllm = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\nvllm:num_requests_waiting{engine="1"} 0\n')
    assert fleet_metrics.parse(vllm) == (5, 7)
    assert fleet_metrics.parse("sglang:num_running_reqs 4\nsglang:num_queue_reqs 1\n") == (4, 1)
    assert fleet_metrics.parse("tgi_batch_current_size 2\ntgi_queue_size 0\n") == (2, 0)
    assert fleet_metrics.parse("process_cpu_seconds_total 1.5\n") is None
    assert fleet_metrics.parse("vllm:num_requests_running{a=\"b\"} oops\n") is None
    assert fleet_metrics.metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"


def test_with_metrics_the_window_fills_the_batch_before_the_first_answer_and_keeps_a_small_queue():
    # a GPU-like server: 24 sequences at once, answers of 50 steps of 20 ms (a 1 s round trip)
    with Fleet(sims=[Sim(step_s=0.02, batch=24, metrics=True)]) as fleet:
        _, b, first = _run(fleet, 120, 50)
    ep = b.describe()["endpoints"][0]
    assert ep["metrics"] is True
    # what the window learned from is in the manifest: readings taken, the server's peak batch
    assert ep["metrics_readings"] >= 3 and 16 <= ep["server_peak"]["running"] <= 24, ep
    assert first >= 24, first  # the batch was full within the first round trip
    assert fleet.sims[0].stats["max_live"] <= 24 + 12  # the server's queue stayed short
    assert 24 <= ep["window"] <= 24 + 6, ep


def test_metrics_are_read_only_while_requests_wait_to_be_sent():
    # 24 requests, 4 s answers (200 steps of 20 ms): all are out within a second; the server's
    # /metrics is not read for the other 3 s (at POLL_S 0.2 s that would be ~15 more readings)
    with Fleet(sims=[Sim(step_s=0.02, batch=64, metrics=True)]) as fleet:
        _, b, first = _run(fleet, 24, 200)
    ep = b.describe()["endpoints"][0]
    assert first == 24 and ep["metrics"] is True and ep["busy_s"] >= 3.0, ep
    assert 1 <= ep["metrics_readings"] <= 6, ep


def test_explicit_concurrency_is_the_starting_window_and_the_ceiling():
    from generator.config.models import ModelConfig
    from generator.engine.backends import make_backend

    with Fleet(sims=[Sim(step_s=0.02)]) as fleet:  # no batch limit, no /metrics
        _, b, first = _run(fleet, 80, 50, concurrency=40, start_window=40)
        assert first == 40  # all 40 went out at once
        assert fleet.sims[0].stats["max_live"] == 40 and b.describe()["endpoints"][0]["max_window"] <= 40
        # a model entry's `concurrency:` starts the window there; left out, the window starts small
        set_ = make_backend(ModelConfig(name="sim", backend="openai", base_url=fleet.urls[0], concurrency=40))
        unset = make_backend(ModelConfig(name="sim", backend="openai", base_url=fleet.urls[0]))
    assert set_.endpoints[0].window == 40 and set_.endpoints[0].ceiling == 40
    assert unset.endpoints[0].window == 8 and unset.endpoints[0].ceiling == 256


def test_without_metrics_or_concurrency_the_window_ramps_to_capacity_before_the_first_answer():
    with Fleet(sims=[Sim(step_s=0.02, batch=32)]) as fleet:  # no /metrics: ramps blind
        _, b, first = _run(fleet, 128, 50, concurrency=48)
    ep = b.describe()["endpoints"][0]
    assert ep["metrics"] is False and ep["metrics_readings"] == 0
    assert first >= 32, first  # past 8, 16: at the batch limit within the first round trip
    assert fleet.sims[0].stats["max_live"] <= 48 and ep["max_window"] <= 48  # never past the ceiling


def test_a_server_that_only_queues_gets_its_window_cut_to_near_its_batch():
    # never 429: 8 at once, the rest queue; the window starts at 48 (explicit) and must come down
    with Fleet(sims=[Sim(step_s=0.01, batch=8)]) as fleet:
        _, b, _ = _run(fleet, 480, 20, concurrency=48, start_window=48)
    ep = b.describe()["endpoints"][0]
    assert ep["window"] <= 0.6 * 48, ep  # cut well below its start (to 9-16 on a quiet machine)


def test_a_cpu_like_server_keeps_a_window_that_fills_its_batch():
    # step time grows with the batch (throughput still rises up to 8 at once): no needless cut
    with Fleet(sims=[Sim(step_s=0.005, batch=8, grow=0.25)]) as fleet:
        _, b, _ = _run(fleet, 240, 20)
    st = fleet.sims[0].stats
    assert st["live_s"] / (st["last_at"] - st["first_at"]) >= 0.85 * 8  # the batch was kept nearly full
    assert b.describe()["endpoints"][0]["window"] >= 8


@pytest.mark.parametrize("fault", ["limit", "fail_503"])
def test_429_and_503_shrink_the_window(fault):
    sim = Sim(step_s=0.005, limit=6) if fault == "limit" else Sim(step_s=0.005, fail_503=30)
    with Fleet(sims=[sim]) as fleet:
        _, b, _ = _run(fleet, 120, 20, concurrency=40, start_window=40)
    ep = b.describe()["endpoints"][0]
    assert ep[f"status_{'429' if fault == 'limit' else '5xx'}"] > 0
    assert ep["window"] < 40 * 0.75, ep  # at least one multiplicative cut, no regrowth to the start
