"""Simulated OpenAI-compatible servers on 127.0.0.1 (aiohttp): many ports served by one asyncio loop.

Each server answers `POST /v1/chat/completions` and `GET /v1/models`, with injectable faults:
- `step_s`, `batch`: a simulated GPU: a request of T completion tokens takes T decode steps of
  `step_s` (flat in the number of sequences, as on a GPU, up to `batch` at once; the rest queue),
  timed on the wall clock (a late-running server loop answers late but does not slow the GPU);
- `grow`: a simulated CPU server instead: a decode step of n sequences takes
  `step_s x (1 + grow x (n - 1))` (a CPU's step time grows with the batch), up to `batch` at once,
  the rest queue; requests join the batch at the next step;
- `metrics`: serve `GET /metrics` as vLLM does (`vllm:num_requests_running` and
  `vllm:num_requests_waiting`, Prometheus text); without it, /metrics is a 404;
- `latency`: a fixed delay per request on top;
- `limit`: answer 429 to a request arriving while `limit` are already being served;
- `fail_503`, `drop`: the next N requests get a 503, or have their connection closed unanswered;
- `kill()`: stop listening and cut every open connection (a crashed server).
A request whose client hangs up is cancelled: its batch slot frees at once and it is not answered
(counted in `cancelled`), as a vLLM server aborts a request whose connection closed.
T is `max_tokens`, or with `vary` a length in [max_tokens/8, max_tokens] drawn from a hash of the
prompt. The text is deterministic in the last user message (same prompt, same answer), ending
with `Final answer: N`. `GET /stats` (and `.stats`) counts what each server did; `GET /requests`
lists the requests it answered.

Used in-process by the tests (`Fleet(...)` as a context manager) and as a separate process by
bench/fleet.py: `python tests/fleet_server.py --count 8 --step-ms 40 --batch 8` prints one JSON
line with the URLs, then serves until killed."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sim:
    step_s: float = 0.0
    batch: int = 0  # 0: no batch limit
    latency: float = 0.0
    limit: int = 0  # 0: never 429
    fail_503: int = 0
    drop: int = 0
    vary: bool = False
    grow: float = 0.0  # > 0: a CPU-like server (step time grows with the batch)
    metrics: bool = False  # serve vLLM's /metrics gauges
    model: str = "sim"
    stats: dict[str, Any] = field(default_factory=lambda: {
        "received": 0, "answered": 0, "cancelled": 0, "status_429": 0, "status_503": 0, "dropped": 0, "live": 0,
        "max_live": 0, "live_s": 0.0, "live_at": 0.0, "completion_tokens": 0, "first_at": None, "last_at": None})
    ids: list = field(default_factory=list)  # the user message of every answered request
    bodies: list = field(default_factory=list)  # every request answered (messages and sampling)
    killed: bool = False


class CPUEngine:
    """A CPU-like server's decode loop: one step for every running sequence at once, each step
    `step_s x (1 + grow x (n - 1))` long for n sequences; at most `batch` run (0: no limit), the
    rest wait. Steps are timed on the wall clock (a late loop catches up, it does not slow the
    simulated CPU)."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.running: list[list] = []  # [tokens left, future]
        self.waiting: list[list] = []
        self.task: asyncio.Task | None = None

    def _admit(self) -> None:
        while self.waiting and (not self.sim.batch or len(self.running) < self.sim.batch):
            self.running.append(self.waiting.pop(0))

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        while self.running:
            n = len(self.running)
            t += self.sim.step_s * (1 + self.sim.grow * (n - 1))
            await asyncio.sleep(max(0.0, t - loop.time()))
            for item in list(self.running):
                item[0] -= 1
                if item[0] <= 0:
                    self.running.remove(item)
                    if not item[1].done():
                        item[1].set_result(None)
            self._admit()
        self.task = None

    async def decode(self, tokens: int) -> None:
        item = [tokens, asyncio.get_running_loop().create_future()]
        self.waiting.append(item)
        self._admit()
        if self.task is None:
            self.task = asyncio.ensure_future(self._steps())
        try:
            await item[1]
        except asyncio.CancelledError:  # the client hung up: its place frees at once
            for queue in (self.running, self.waiting):
                if item in queue:
                    queue.remove(item)
            self._admit()
            raise


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _instance(schema: dict, h: int) -> Any:
    """A small value that fits `schema` (for requests with response_format)."""
    kind = schema.get("type")
    if kind == "object":
        return {k: _instance(v, h + i) for i, (k, v) in enumerate((schema.get("properties") or {}).items())}
    if kind == "array":
        return [_instance(schema.get("items") or {}, h)] * max(int(schema.get("minItems", 1)), 1)
    if kind in ("integer", "number"):
        return h % 100
    if kind == "boolean":
        return True
    if "enum" in schema:
        return schema["enum"][0]
    return f"value {h % 1000}"


class Fleet:
    """`n` simulated servers (or the given `sims`) on free ports, served from one thread's loop."""

    def __init__(self, n: int = 1, sims: list[Sim] | None = None, **common: Any):
        self.sims = sims or [Sim(**common) for _ in range(n)]
        self.urls: list[str] = []
        self._sites: list = []
        self._conns: list[set] = [set() for _ in self.sims]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "Fleet":
        self._thread.start()
        assert self._ready.wait(30), "simulated servers did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def kill(self, i: int, busy: bool = False) -> int:
        """Server `i` dies: it stops listening and every open connection is cut; with `busy`, at
        the first moment it is serving a request. Returns how many it was serving at that instant
        (checked and counted in the servers' loop, so exact)."""
        done = threading.Event()
        held = []

        def cut() -> None:
            if busy and self.sims[i].stats["live"] == 0:
                self._loop.call_later(0.0005, cut)
                return
            held.append(self.sims[i].stats["live"])
            self.sims[i].killed = True
            self._sites[i]._server.close()
            for transport in list(self._conns[i]):
                transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(cut)
        assert done.wait(30)
        return held[0]

    def _app(self, i: int):
        from aiohttp import web

        sim, conns = self.sims[i], self._conns[i]
        # a GPU's batch slots on the wall clock: each holds the time it frees up. A request takes
        # the earliest-free slot when it arrives and finishes a fixed time after that slot frees
        # (or after it arrives, if later), however late this loop gets to run: on a loaded
        # machine the simulation's own CPU must not slow the simulated GPU.
        slots = [0.0] * sim.batch
        loop = asyncio.get_running_loop()
        cpu = CPUEngine(sim) if sim.grow > 0 else None

        def occupy(st: dict, step: int) -> None:  # live count, and its integral over time
            now = loop.time()
            st["live_s"] += st["live"] * (now - (st["live_at"] or now))
            st["live_at"] = now
            st["live"] += step
            st["max_live"] = max(st["max_live"], st["live"])

        def abort(request) -> web.Response:
            if request.transport is not None:  # None: the kill already cut this connection
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client: the connection is gone

        async def chat(request: web.Request) -> web.Response:
            conns.add(request.transport)
            try:
                body = await request.json()
                st = sim.stats
                st["received"] += 1
                st["first_at"] = st["first_at"] or loop.time()
                if sim.killed:
                    return abort(request)
                if sim.drop > 0:
                    sim.drop -= 1
                    st["dropped"] += 1
                    return abort(request)
                if sim.fail_503 > 0:
                    sim.fail_503 -= 1
                    st["status_503"] += 1
                    return web.json_response({"error": {"message": "overloaded"}}, status=503)
                if sim.limit and st["live"] >= sim.limit:
                    st["status_429"] += 1
                    return web.json_response({"error": {"message": "too many requests"}}, status=429)
                occupy(st, +1)
                try:
                    prompt = body["messages"][-1]["content"]
                    h = _digest(prompt)
                    cap = int(body.get("max_tokens") or 16)
                    tokens = max(1, cap // 8 + h % max(cap - cap // 8, 1)) if sim.vary else cap
                    if cpu is not None:
                        if sim.latency:
                            await asyncio.sleep(sim.latency)
                        await cpu.decode(tokens)
                    elif slots:
                        now = loop.time()
                        start = max(now, heapq.heappop(slots))
                        end = start + sim.latency + tokens * sim.step_s
                        heapq.heappush(slots, end)
                        try:
                            await asyncio.sleep(end - now)
                        except asyncio.CancelledError:  # the client hung up: the slot frees now
                            if end in slots:  # else a later arrival already queued behind it
                                slots.remove(end)
                                slots.append(max(loop.time(), start))
                            heapq.heapify(slots)
                            raise
                    elif sim.latency or sim.step_s:
                        await asyncio.sleep(sim.latency + tokens * sim.step_s)
                except asyncio.CancelledError:
                    st["cancelled"] += 1
                    raise
                finally:
                    occupy(st, -1)
                if sim.killed:
                    return abort(request)
                if "response_format" in body:
                    text = json.dumps(_instance(body["response_format"]["json_schema"]["schema"], h))
                else:
                    text = f"Working through it step by step.\nFinal answer: {h % 97}"
                st["answered"] += 1
                st["completion_tokens"] += tokens
                st["last_at"] = loop.time()
                sim.ids.append(prompt)
                sim.bodies.append({k: body.get(k) for k in ("messages", "max_tokens", "temperature", "top_p")})
                return web.json_response({
                    "id": f"c{st['answered']}", "object": "chat.completion", "model": sim.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "length" if tokens >= cap and not sim.vary else "stop"}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens}})
            finally:
                conns.discard(request.transport)

        async def models(request: web.Request) -> web.Response:
            if sim.killed:
                return abort(request)
            return web.json_response({"object": "list", "data": [{"id": sim.model, "object": "model"}]})

        async def metrics(request: web.Request) -> web.Response:
            if not sim.metrics:
                return web.Response(status=404, text="not found")
            if cpu is not None:
                running, waiting = len(cpu.running), len(cpu.waiting)
            else:
                live = sim.stats["live"]
                running = min(live, sim.batch) if sim.batch else live
                waiting = live - running
            name = f'model_name="{sim.model}",engine="0"'
            return web.Response(text=(
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{{{name}}} {float(running)}\n"
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{{{name}}} {float(waiting)}\n"), content_type="text/plain")

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(sim.stats)

        async def bodies(request: web.Request) -> web.Response:
            return web.json_response(sim.bodies)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/stats", stats)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/requests", bodies)
        return app

    def _serve(self) -> None:
        from aiohttp import web

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            runners = []
            for i in range(len(self.sims)):
                # handler_cancellation: a client that hangs up cancels its request, as vLLM's server
                # aborts a request whose connection closed (a hedge's loser frees its batch slot)
                runner = web.AppRunner(self._app(i), access_log=None, shutdown_timeout=0.5,
                                       handler_cancellation=True)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]
                self.urls.append(f"http://127.0.0.1:{port}/v1")
                runners.append(runner)
                self._sites.append(site)
            self._ready.set()
            await self._stop.wait()
            for i, transports in enumerate(self._conns):
                for t in list(transports):
                    t.abort()
            for runner in runners:
                await runner.cleanup()

        asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve simulated GPU servers until killed.")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--step-ms", type=float, default=40.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vary", action="store_true")
    ap.add_argument("--grow", type=float, default=0.0, help="CPU-like: step time grows by this share per sequence")
    ap.add_argument("--metrics", action="store_true", help="serve vLLM's /metrics gauges")
    ap.add_argument("--model", default="sim")
    args = ap.parse_args()
    fleet = Fleet(args.count, step_s=args.step_ms / 1000, batch=args.batch, vary=args.vary, model=args.model,
                  grow=args.grow, metrics=args.metrics)
    with fleet:
        print(json.dumps({"urls": fleet.urls}), flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin (or kills us)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
