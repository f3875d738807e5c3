"""A run-like folder for model calls made outside a spec's run: `topics expand`, `personas expand`
and a cluster-agent judge. It holds what a run folder holds of its requests: the published answers
(`answers/*.parquet`, with the usage ledger) and a manifest, so the same calls again are answered
from the cache and `synthgen usage DIR` counts them, per session."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from generator.core.backend import Backend
from generator.core.redact import scrub
from generator.engine.request_cache import new_session
from generator.engine.request_path import RequestPath
from generator.engine.run_folder import RunFolder
from generator.engine.runner import versions
from generator.runs.closeout import run_usage


@contextmanager
def request_session(out: str | Path, backend: Backend, name: str, stage: str, retries: int = 2,
                    details: dict[str, Any] | None = None) -> Iterator[RequestPath]:
    """`backend` on the request path (`RequestPath`: cache, retries, usage) of the folder `out`,
    locked for the session like a run. `stage` names the calls in the usage ledger; `details` (the
    command's settings) go into the manifest. The backend itself is the caller's to close."""
    folder = RunFolder(out)
    with folder.lock():
        folder.create()
        manifest = folder.read_manifest() or {"created_at": time.time()}
        manifest.update({"session": new_session(), "name": name, "kind": stage, "versions": versions(),
                         "details": scrub(details or {})})
        folder.write_manifest(manifest)  # written first: a folder in use shows what it is for
        cache = folder.cache(manifest["session"])
        path = RequestPath(backend, cache, stage, retries)
        try:
            yield path
        finally:
            cache.close()  # publishes the last answers and their usage
            manifest["models"] = {backend.model: backend.describe()}
            manifest["updated_at"] = time.time()
            manifest["usage"] = run_usage(folder.path, manifest)
            folder.write_manifest(manifest)
