"""Runs a job in this process: one backend (one vLLM engine, one server client) per model, kept
across calls (rounds reuse the loaded engines) until `close`."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from generator.config.models import ModelConfig
from generator.core.backend import Backend
from generator.engine.backends import make_backend
from generator.engine.backends.memory import shared_engines
from generator.engine.executors.base import ExecReport, Job
from generator.engine.pipeline.execute import run_records
from generator.engine.run_folder import RunFolder

log = logging.getLogger(__name__)


def build_backends(factory: Callable[..., Backend], configs: Iterable[ModelConfig], names: Iterable[str],
                   kwargs: dict[str, Any], have: dict[str, Backend]) -> float:
    """Backends for `names` into `have` (kept ones are reused); several offline models share the
    machine's memory (`memory.shared_engines`). Returns the seconds spent starting new ones."""
    configs = {c.name: c for c in configs}
    shares = shared_engines(configs.values())
    load = 0.0
    for name in sorted(names):
        if name in have:
            continue
        cfg = configs[name]
        if shares.get(name):  # several offline models stay loaded side by side: each gets its slice
            cfg = cfg.model_copy(update={"engine": {**shares[name], **cfg.engine}})
        t0 = time.time()
        have[name] = factory(cfg, **kwargs)
        load += time.time() - t0
        log.info("model %s ready (%s backend) in %.1fs", name, cfg.backend, time.time() - t0)
    return load


class LocalExecutor:
    gates = True  # honours a Job's budget gate (the scheduler runs in this process)

    def __init__(self, backend_factory: Callable[..., Backend] | None = None):
        self.backend_factory = backend_factory or make_backend
        self.backends: dict[str, Backend] = {}
        self.model_calls = 0  # over every call (the report counts one call)
        self._report = ExecReport()

    def report(self) -> ExecReport:
        return self._report

    def execute(self, job: Job) -> None:
        self._report = rep = ExecReport()
        rep.load_seconds = build_backends(self.backend_factory, job.resolved.spec.models, job.models,
                                          job.backend_kwargs, self.backends)
        backends = {m: self.backends[m] for m in job.models}
        if job.on_engine_ready:
            job.on_engine_ready()
        try:
            stats = run_records(RunFolder(job.run_dir), job.resolved, job.pipeline, job.rows, job.sizes, backends,
                                job.session, job.on_record or (lambda r: None), job.on_shard or (lambda s: None),
                                gate=job.gate, on_flight=job.on_flight)
        finally:
            rep.backends = {m: b.describe() for m, b in backends.items()}  # with what they did (stats)
        rep.model_calls, rep.cache_hits, rep.stuck = stats.model_calls, stats.cache_hits, stats.stuck
        rep.parked = stats.parked
        self.model_calls += stats.model_calls

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
        self.backends.clear()
