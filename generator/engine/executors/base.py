"""How a plan's records reach backends. Executors are swappable (this process, a Ray cluster):
each takes the same `Job`, runs it on the one execution core (`engine.pipeline.scheduler`) and
writes the same shard files into the same run folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from generator.engine.pipeline.dag import Pipeline
from generator.engine.planner import Resolved
from generator.engine.requests import ShardStats


@dataclass
class Job:
    run_dir: Path
    resolved: Resolved
    pipeline: Pipeline                        # a single-stage spec is a one-node pipeline
    rows: Iterable[dict]                      # pending plan rows (each with its `shard`), in plan order
    sizes: dict[str, int]                     # records per pending shard
    models: set[str]                          # every model a record may reach
    session: str | None = None                # usage is counted under this session (see RequestCache)
    lock: dict | None = None                  # the run lock's holder and token (`run_lock.holder`): a Ray
                                              # actor checks its writes against it
    on_record: Callable[[dict], None] | None = None     # every row as its record ends (progress, tokens)
    on_shard: Callable[[ShardStats], None] | None = None  # a shard was written
    on_engine_ready: Callable[[], None] | None = None   # models are loaded: generation starts now
    backend_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. on_finished(n) for progress
    gate: Any = None                          # engine.budget.Gate asked before each request (local only)
    on_flight: Callable[[int], None] | None = None  # requests sent to models and not yet answered (local only)


@dataclass
class ExecReport:
    """What one `execute` call did (read with `Executor.report()` once it has finished)."""

    model_calls: int = 0        # requests that reached a model in this call (cache hits excluded)
    cache_hits: int = 0
    load_seconds: float = 0.0   # starting engines created in this call; reused ones cost nothing
    backends: dict[str, dict] = field(default_factory=dict)  # model -> its backend's describe()
    stuck: int = 0              # records the liveness guard ended (a scheduler fault if not 0)
    parked: int = 0             # requests the budget gate kept back


class Executor(Protocol):
    def execute(self, job: Job) -> None:
        """Run every record of the job and write its shards (calling the job's hooks)."""
        ...

    def report(self) -> ExecReport:
        """The last `execute` call's report."""
        ...

    def close(self) -> None:
        ...
