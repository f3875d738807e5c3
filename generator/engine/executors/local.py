"""Runs every shard in this process, one backend (one vLLM engine) per model, reused across rounds."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Iterator

from generator.engine.backends import make_backend
from generator.engine.backends.memory import shared_engines
from generator.core.backend import Backend
from generator.engine.requests import Shard, ShardAssembler, ShardStats, generate_rows
from generator.engine.run_folder import RunFolder
from generator.engine.executors.base import ExecReport, Job


class LocalExecutor:
    runs_stages = True  # a pipeline's scheduler feeds this executor's backends (engine/pipeline)

    def __init__(self, backend_factory: Callable[..., Backend] | None = None):
        self.backend_factory = backend_factory or make_backend
        self.backends: dict[str, Backend] = {}
        self.model_calls = 0  # over every call (the report counts one call)
        self._report = ExecReport()

    def backend(self, job: Job, name: str) -> Backend:
        if name not in self.backends:
            cfg = job.models[name]
            share = shared_engines(job.models.values()).get(name)
            if share:  # several offline models stay loaded side by side: each gets its slice
                cfg = cfg.model_copy(update={"engine": {**share, **cfg.engine}})
            t0 = time.time()
            self.backends[name] = self.backend_factory(cfg, **job.backend_kwargs)
            self._report.load_seconds += time.time() - t0
        return self.backends[name]

    def report(self) -> ExecReport:
        return self._report

    def execute(self, job: Job) -> Iterator[ShardStats]:
        self._report = ExecReport()
        folder = RunFolder(job.run_dir)
        cache = folder.cache(session=job.session)
        by_model: dict[str, list[Shard]] = defaultdict(list)
        for shard in job.shards:
            models = {r["model"] for r in shard.rows}
            for m in models:  # a shard may mix models: split its rows, reassemble by id
                by_model[m].append(shard)
        landed: list[ShardStats] = []
        stats = {s.name: ShardStats(name=s.name, records=len(s.rows)) for s in job.shards}
        started = time.time()

        def write(shard: Shard, rows: list[dict]) -> None:
            folder.write_shard(shard.name, rows)
            landed.append(stats[shard.name].count(rows, started))

        assembler = ShardAssembler(job.shards, write)

        def on_final(row: dict) -> None:
            if job.on_record:
                job.on_record(row)
            assembler.add(row)

        try:
            for model, shards in by_model.items():
                rows = [r for s in shards for r in s.rows if r["model"] == model]
                backend = self.backend(job, model)
                if job.on_engine_ready:
                    job.on_engine_ready()
                calls = generate_rows(backend, rows, cache, job.retries, job.schemas, job.renderers, on_final)
                self.model_calls += calls
                self._report.model_calls += calls
                self._report.backends[model] = backend.describe()
                while landed:
                    yield landed.pop(0)
        finally:
            cache.close()
        while landed:
            yield landed.pop(0)

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
        self.backends.clear()
