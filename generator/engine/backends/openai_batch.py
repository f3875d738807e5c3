"""Batch-file generation: requests as OpenAI Batch API JSONL files, results ingested when ready.

`runner="api"` uploads each file to an OpenAI-compatible endpoint (`POST /files`, `POST /batches`),
polls `GET /batches/{id}` and downloads the output and error files. `runner="local"` pushes the
same files through vLLM's own batch entrypoint (`python -m vllm.entrypoints.openai.run_batch`).

Everything lives in `RUN/batches/<model>/part-NNNNN.*` (input JSONL, request ids with their
payload hashes, state with file and batch ids, downloaded output). A part's state is written the
moment the endpoint answers with an id, so a killed `synthgen run` resumes by polling the batch it
already paid for; only requests that no live part holds (or that failed) are submitted again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from generator.core.errors import BackendError
from generator.core.backend import ProgressFn, Request, RequestFeed, Result
from generator.engine.backends.openai_wire import auth_headers, choice_result, redacted_url, request_body

MAX_REQUESTS = 50_000           # the Batch API's limits per input file
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
DEAD = {"failed", "expired", "cancelled", "cancelling"}


def split_lines(lines: list[bytes], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES) -> list[list[bytes]]:
    """Group JSONL lines into files within both limits (a file never exceeds either)."""
    parts: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) > max_bytes:
            raise BackendError(f"backend openai_batch: one request is {len(line):,} bytes, over the "
                               f"{max_bytes:,}-byte file limit; shorten the prompt")
        if cur and (len(cur) >= max_requests or size + len(line) > max_bytes):
            parts.append(cur)
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        parts.append(cur)
    return parts


def parse_output_line(line: str) -> Result | None:
    """One line of a batch output or error file as a Result (None for a blank line)."""
    if not line.strip():
        return None
    data = json.loads(line)
    rid = data.get("custom_id") or ""
    resp = data.get("response") or {}
    body = resp.get("body") or {}
    status = int(resp.get("status_code") or 0)
    if data.get("error") or status >= 400 or not body.get("choices"):
        err = data.get("error") or body.get("error") or body or "no response"
        msg = err.get("message") if isinstance(err, dict) and err.get("message") else json.dumps(err)
        return Result(id=rid, text="", finish_reason="error", error=f"batch: HTTP {status}: {msg}"[:300])
    return choice_result(rid, body["choices"][0], body.get("usage") or {})


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Part:
    """One input file and what became of it, stored beside it."""

    def __init__(self, folder: Path, index: int):
        self.base = folder / f"part-{index:05d}"
        self.index = index
        self.state: dict[str, Any] = {}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    input_path = property(lambda self: self.base.with_suffix(".input.jsonl"))
    ids_path = property(lambda self: self.base.with_suffix(".ids.json"))
    state_path = property(lambda self: self.base.with_suffix(".state.json"))
    output_path = property(lambda self: self.base.with_suffix(".output.jsonl"))
    errors_path = property(lambda self: self.base.with_suffix(".errors.jsonl"))

    def ids(self) -> dict[str, str]:
        return json.loads(self.ids_path.read_text()) if self.ids_path.exists() else {}

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        _write_atomic(self.state_path, json.dumps(self.state, indent=1, sort_keys=True).encode())

    @property
    def finished(self) -> bool:
        return bool(self.state.get("downloaded")) or self.state.get("status") in DEAD

    def results(self) -> dict[str, Result]:
        out: dict[str, Result] = {}
        for path in (self.output_path, self.errors_path):
            if path.exists():
                for line in path.read_text().splitlines():
                    res = parse_output_line(line)
                    if res is not None:
                        out[res.id] = res
        return out


class OpenAIBatchBackend:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = None, *,
                 runner: str = "api", run_dir: str | Path | None = None, engine: dict[str, Any] | None = None,
                 poll_s: float = 10.0, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES,
                 send_seed: bool = True, timeout: float = 300.0, max_retries: int = 6, transport=None,
                 on_finished=None, **_: Any):
        self.model = model
        self.runner = runner
        self.base_url = (base_url or "").rstrip("/")
        self.public_url = redacted_url(self.base_url) if self.base_url else "local run_batch"
        self.api_key_env = api_key_env
        self.engine = dict(engine or {})
        self.poll_s = poll_s
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.send_seed = send_seed
        self.timeout, self.max_retries = timeout, max_retries
        self._transport = transport
        self.on_finished = on_finished
        self.linger = 0.5  # stream: how long a batch waits for follow-ups that keep arriving
        self.load_seconds = 0.0
        self._tmp: str | None = None
        if run_dir is None:  # no run folder: batches cannot be resumed, keep them in a temp dir
            self._tmp = tempfile.mkdtemp(prefix="synthgen-batch-")
            run_dir = self._tmp
        self.folder = Path(run_dir) / "batches" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
        self.stats = {"parts_submitted": 0, "parts_resumed": 0, "requests_submitted": 0, "polls": 0}
        self._headers = auth_headers(api_key_env, f"backend openai_batch ({self.public_url})")

    def http_client(self):
        """An httpx client with this backend's key and timeout, for `batch_api.BatchClient`."""
        import httpx

        return httpx.Client(headers=self._headers, transport=self._transport,
                            timeout=httpx.Timeout(self.timeout, connect=10.0))

    def __repr__(self) -> str:  # never show headers (they hold the key)
        return f"OpenAIBatchBackend(model={self.model!r}, runner={self.runner!r}, base_url={self.public_url!r})"

    # -- parts on disk
    def parts(self) -> list[Part]:
        if not self.folder.exists():
            return []
        idx = sorted(int(p.name[5:10]) for p in self.folder.glob("part-*.ids.json"))
        return [Part(self.folder, i) for i in idx]

    def _new_parts(self, reqs: list[Request], first: int) -> list[Part]:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"custom_id": r.id, "method": "POST", "url": ENDPOINT,
                             "body": request_body(self.model, r, self.send_seed)}).encode() + b"\n"
                 for r in reqs]
        hashes = {r.id: r.payload_hash(self.model) for r in reqs}
        parts = []
        for k, chunk in enumerate(split_lines(lines, self.max_requests, self.max_bytes)):
            part = Part(self.folder, first + k)
            _write_atomic(part.input_path, b"".join(chunk))
            ids = [json.loads(line)["custom_id"] for line in chunk]
            part.save(status="written", requests=len(ids))
            # the ids file is written last: a part is only considered once it is complete
            _write_atomic(part.ids_path, json.dumps({i: hashes[i] for i in ids}).encode())
            parts.append(part)
        return parts

    # -- Backend interface
    batch = True  # answers come a whole batch job at a time: no stall watchdog applies

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """A batch API has no continuous feed: each batch job takes every request queued when it is
        sent (waiting while follow-ups keep arriving `linger` s apart); the next job takes what was
        queued meanwhile (retries, later stages)."""
        while True:
            reqs = feed.take(timeout=None)
            if not reqs:
                if feed.exhausted():
                    return
                continue
            while more := feed.take(timeout=self.linger):
                reqs.extend(more)
            yield from self.generate(reqs, on_result)

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        reqs = list(requests)
        if not reqs:
            return
        want = {r.id: r.payload_hash(self.model) for r in reqs}
        done: dict[str, Result] = {}
        live: list[Part] = []
        held: set[str] = set()
        existing = self.parts()
        for part in existing:  # answers already downloaded, and batches still running, that match
            ids = {i: h for i, h in part.ids().items() if want.get(i) == h}
            if not ids:
                continue
            if part.finished:
                for rid, res in part.results().items():
                    if rid in ids and rid not in done and res.finish_reason != "error":
                        done[rid] = res
            else:
                live.append(part)
                held.update(i for i in ids if i not in done)
        self.stats["parts_resumed"] += len(live)
        fresh = [r for r in reqs if r.id not in done and r.id not in held]
        first = max((p.index for p in existing), default=-1) + 1
        if fresh:
            new = self._new_parts(fresh, first)
            self.stats["requests_submitted"] += len(fresh)
            self.stats["parts_submitted"] += len(new)
            live.extend(new)
        why: dict[str, str] = {}
        for part in live:
            self._complete(part)
            got = part.results()
            reason = (f"batch {part.state.get('batch_id') or part.base.name} ended "
                      f"{part.state.get('status')} without an answer for this request"
                      + (f": {part.state['error']}" if part.state.get("error") else ""))
            for rid in part.ids():
                if rid in want and rid not in done:
                    if rid in got:
                        done[rid] = got[rid]
                    else:
                        why[rid] = reason
        for r in reqs:
            res = done.get(r.id) or Result(id=r.id, text="", finish_reason="error",
                                           error=why.get(r.id, "no batch answered this request"))
            if self.on_finished is not None:
                self.on_finished(1)
            if on_result:
                on_result(res)
            yield res

    def _complete(self, part: Part) -> None:
        if part.finished:
            return
        if self.runner == "local":
            from generator.engine.backends.batch_local import run_local

            run_local(self.model, self.engine, part.input_path, part.output_path)
            part.save(status="completed", downloaded=True)
            return
        from generator.engine.backends.batch_api import BatchClient

        with BatchClient(self) as client:
            client.complete(part)

    def describe(self) -> dict[str, Any]:
        info = {"backend": "openai_batch", "feed": "batch jobs", "name": self.model, "runner": self.runner,
                "base_url": self.public_url, "api_key_env": self.api_key_env, "poll_s": self.poll_s,
                "send_seed": self.send_seed, "batch_folder": str(self.folder), "stats": dict(self.stats)}
        if self.runner == "local":
            info["engine"] = dict(self.engine)
        return info

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
