"""What a server says about its own load: the requests it is running and the requests waiting in
its queue, read from its Prometheus `/metrics` (vLLM, SGLang and TGI export them).

Optional and cheap: one GET per endpoint at most every `POLL_S` while requests wait in the client
to be sent (once all are out, a reading would change nothing and costs the server CPU), each
bounded by `TIMEOUT_S`. A server without `/metrics` (a hosted API, a proxy), or whose page names
none of the gauges below, is asked once and then left alone: its window adapts from its answers
alone (`fleet.py`). What the window does with a reading is `Endpoint.observe_queue`."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

POLL_S = 0.2  # between readings of one endpoint: a fraction of a CPU server's decode round trip
TIMEOUT_S = 1.0  # a reading that takes longer is skipped: the window never waits for one
GIVE_UP_AFTER = 3  # consecutive failed readings of an endpoint that once answered: stop asking

# (running, waiting) gauge names per server kind
GAUGES = (("vllm:num_requests_running", "vllm:num_requests_waiting"),
          ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
          ("tgi_batch_current_size", "tgi_queue_size"))


def metrics_url(base_url: str) -> str:
    """`/metrics` sits at the server's root, beside `/v1`."""
    root = base_url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"


def parse(text: str) -> tuple[int, int] | None:
    """(running, waiting) summed over the page's series (a server with several engines labels one
    series per engine), or None when the page holds neither gauge of any known kind."""
    sums: dict[str, float] = {}
    wanted = {name for pair in GAUGES for name in pair}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{") if "{" in line.split(" ", 1)[0] else line.partition(" ")
        name = name.strip()
        if name not in wanted:
            continue
        value = rest.rsplit("}", 1)[-1].split() if "}" in rest else rest.split()
        try:
            sums[name] = sums.get(name, 0.0) + float(value[0])
        except (ValueError, IndexError):
            continue
    for running, waiting in GAUGES:
        if running in sums and waiting in sums:
            return int(sums[running]), int(sums[waiting])
    return None


async def read(client, url: str) -> tuple[int, int] | None:
    """One reading, or None when the server has no usable `/metrics` or did not answer in time."""
    import httpx

    try:
        resp = await asyncio.wait_for(client.get(url), TIMEOUT_S)
        if resp.status_code != 200:
            return None
        return parse(resp.text)
    except (asyncio.TimeoutError, httpx.HTTPError) as exc:
        log.debug("metrics %s: no reading (%s)", url, type(exc).__name__)
        return None
    except Exception as exc:  # noqa: BLE001  optional reading: a transport that only speaks chat, an odd page;
        # whatever breaks here must not touch the run, which then adapts from answers alone
        log.debug("metrics %s: unreadable (%s: %s)", url, type(exc).__name__, exc)
        return None


async def watch(endpoint: Any, client, busy: Callable[[], bool], changed: Callable[[], None]) -> None:
    """While `busy()`, every POLL_S: read `endpoint`'s queue and hand it to its window, or, for a
    server without metrics that has not answered yet, let the window ramp (`Endpoint.ramp`); call
    `changed()` (the dispatcher) when the window moved. Ends by itself once neither applies;
    cancelled when the run ends."""
    url = metrics_url(endpoint.url)
    misses = 0
    while True:
        if busy():
            before = int(endpoint.window)
            if endpoint.has_metrics is not False:
                reading = await read(client, url)
                if reading is None:
                    misses += 1
                    if not endpoint.has_metrics or misses >= GIVE_UP_AFTER:
                        log.debug("metrics %s: none usable; the window adapts from answers alone",
                                  endpoint.public_url)
                        endpoint.has_metrics = False
                else:
                    misses = 0
                    endpoint.has_metrics = True
                    endpoint.observe_queue(*reading)
            if endpoint.has_metrics is False:
                if not endpoint.blind:
                    return
                endpoint.ramp()
            if int(endpoint.window) != before:
                changed()
        await asyncio.sleep(POLL_S)
