"""The OpenAI Files and Batches API over httpx, for `backend: openai_batch` (runner `api`).

Every id the endpoint hands back is saved in the part's state before the next call, so a
process killed at any point resumes without paying twice: a part with a batch id is polled; a
part with only a file id first looks for a batch already made from that file, then creates one.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Protocol

from generator.core.errors import BackendError
from generator.engine.backends.openai_wire import RETRY_STATUSES, parse_retry_after, server_message

FINAL = {"completed", "failed", "expired", "cancelled"}


# What the client needs of the backend and of a part (openai_batch's OpenAIBatchBackend and Part),
# named here so that this module does not import the one that imports it.
class BatchEndpoint(Protocol):
    base_url: str
    public_url: str
    folder: Path
    max_retries: int
    poll_s: float
    stats: dict[str, int]

    def http_client(self) -> Any: ...


class BatchPart(Protocol):
    base: Path
    state: dict[str, Any]

    @property
    def input_path(self) -> Path: ...

    @property
    def output_path(self) -> Path: ...

    @property
    def errors_path(self) -> Path: ...

    def save(self, **changes: Any) -> None: ...


class BatchClient:
    def __init__(self, backend: BatchEndpoint):
        self.b = backend
        self.http = backend.http_client()

    def __enter__(self) -> "BatchClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any):
        """One call with retries on timeouts, connection errors, 429 and 5xx; 4xx raise at once."""
        import httpx

        url = self.b.base_url + path
        for attempt in range(self.b.max_retries + 1):
            retry_after = None
            try:
                resp = self.http.request(method, url, **kw)
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUSES or attempt == self.b.max_retries:
                    raise BackendError(f"backend openai_batch: {self.b.public_url}{path} answered HTTP "
                                       f"{resp.status_code}: {server_message(resp.content)}")
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if attempt == self.b.max_retries:
                    raise BackendError(f"backend openai_batch: cannot reach {self.b.public_url} after "
                                       f"{attempt + 1} attempts ({type(exc).__name__}); the batch ids are "
                                       f"kept in {self.b.folder}: rerun to resume") from None
            delay = retry_after if retry_after is not None else min(30.0, 0.5 * 2 ** attempt)
            time.sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def _find_batch(self, file_id: str) -> dict | None:
        """A batch already created from `file_id` (the process may have died before saving its id)."""
        after = None
        for _ in range(20):  # at most 2,000 recent batches
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            try:
                data = self._call("GET", "/batches", params=params).json()
            except BackendError:
                return None  # listing is optional in some servers: create a new batch then
            for b in data.get("data") or []:
                if b.get("input_file_id") == file_id:
                    return b
            if not data.get("has_more") or not data.get("data"):
                return None
            after = data["data"][-1].get("id")
        return None

    def submit(self, part: BatchPart) -> None:
        if not part.state.get("file_id"):
            resp = self._call("POST", "/files", data={"purpose": "batch"},
                              files={"file": (part.input_path.name, part.input_path.read_bytes(),
                                              "application/jsonl")})
            part.save(file_id=resp.json()["id"], status="uploaded")
        file_id = part.state["file_id"]
        found = self._find_batch(file_id)
        if found is None:
            found = self._call("POST", "/batches", json={
                "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "metadata": {"synthgen_part": part.base.name}}).json()
        part.save(batch_id=found["id"], status=found.get("status") or "validating", submitted_at=time.time())

    def complete(self, part: BatchPart) -> None:
        """Submit (if needed), poll until the batch ends, download its output and error files."""
        if not part.state.get("batch_id"):
            self.submit(part)
        batch_id = part.state["batch_id"]
        while True:
            info = self._call("GET", f"/batches/{batch_id}").json()
            self.b.stats["polls"] += 1
            status = info.get("status") or "unknown"
            if status != part.state.get("status") or status in FINAL:
                errs = [e.get("message") for e in ((info.get("errors") or {}).get("data") or []) if isinstance(e, dict)]
                part.save(status=status, request_counts=info.get("request_counts"),
                          error="; ".join(str(e) for e in errs if e)[:300] or None)
            if status in FINAL:
                break
            time.sleep(self.b.poll_s)
        for key, path in (("output_file_id", part.output_path), ("error_file_id", part.errors_path)):
            fid = info.get(key)
            if fid:
                data = self._call("GET", f"/files/{fid}/content").content
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        part.save(downloaded=True, **{k: info.get(k) for k in ("output_file_id", "error_file_id")})
