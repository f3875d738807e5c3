"""How shards of a plan reach backends. Executors are swappable (local process, Ray cluster):
each takes the same `Job` and writes the same shard files into the same run folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from generator.engine.requests import Shard, ShardStats
from generator.config.spec import ModelConfig


@dataclass
class Job:
    run_dir: Path
    shards: list[Shard]                       # only the shards still to write
    models: dict[str, ModelConfig]            # model name -> its spec entry
    schemas: dict[str, dict | None]           # template name -> JSON schema (structured output)
    renderers: dict[str, str | None]          # template name -> renderer name
    retries: int = 2
    on_record: Callable[[dict], None] | None = None   # each finished row (progress, tokens)
    backend_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. on_finished(n) for progress
    on_engine_ready: Callable[[], None] | None = None   # a model is loaded: generation starts now
    session: str | None = None                # usage is counted under this session (see RequestCache)


@dataclass
class ExecReport:
    """What one `execute` call did (read with `Executor.report()` once it has finished)."""

    model_calls: int = 0        # requests that reached a model in this call (cache hits excluded)
    load_seconds: float = 0.0   # starting engines created in this call; reused ones cost nothing
    backends: dict[str, dict] = field(default_factory=dict)  # model -> its backend's describe()


class Executor(Protocol):
    def execute(self, job: Job) -> Iterator[ShardStats]:
        """Generate and write every shard of the job; yield stats as each shard lands."""
        ...

    def report(self) -> ExecReport:
        """The last `execute` call's report."""
        ...

    def close(self) -> None:
        ...
