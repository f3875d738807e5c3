"""Runs every spec, single-stage or pipeline, on Ray actors, each with its own backends (one vLLM
engine per model per actor; as many actors as the cluster's GPUs or CPUs hold, see
`ray_sizing.size_actors`).

The driver only reads the plan and deals batches of whole shards to actors; an actor resolves the
spec once and runs its batch on the same execution core as the local executor (the continuous
scheduler: every stage, retry and regeneration of a record stays on that actor), writes each shard
file itself the moment its last record ends, and streams each shard's stats and rows back to the
driver (a streaming actor method), which reports progress.
The run folder must be one every node can write: a shared filesystem (local disk for a
one-machine Ray, NFS/Lustre/... for a cluster) or an object store URL (`--out s3://bucket/prefix`;
each node needs the store's credentials, e.g. the AWS_* variables, which are not forwarded). No
file in it is opened as a database: each actor keeps its request cache in SQLite on its own disk
and publishes its answers into the folder as append-only `answers/*.parquet` files (batched, and
always before a shard is written; see `RequestCache`).

An actor that dies (node lost, OOM, `ray.kill`) costs only the shards it had not written yet:
a replacement actor is started and those shards are resubmitted, and the answers the dead actor
had already published are replayed, not regenerated; only those it had not published yet (at
most a few seconds' worth) are paid for again. A shard is retried at most `max_shard_retries`
times. Errors a user can act on (`SynthgenError`: model fails to load, server unreachable, disk
full) are raised as themselves, one line, not wrapped in a Ray traceback.
"""
from __future__ import annotations

import logging
import importlib
import math
import os
import re
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping

from generator.core import storage
from generator.core.errors import SynthgenError
from generator.engine.requests import Shard, ShardStats
from generator.engine.run_folder import RunFolder
from generator.engine.executors.base import ExecReport, Job
from generator.engine.executors.ray_sizing import ActorSizing, gpu_memory_share, size_actors

log = logging.getLogger(__name__)

# environment forwarded to actors (matters on a remote cluster; local workers inherit it anyway).
# API keys are NOT forwarded: set the variable named by `api_key_env` on the worker nodes.
FORWARD_ENV_PREFIXES = ("SYNTHGEN_", "VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
# Never forwarded unless named in SYNTHGEN_RAY_FORWARD_ENV (comma-separated): HF_TOKEN and the like.
SECRET_ENV = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables sent to Ray workers: the allow-listed prefixes minus anything secret-looking, plus
    the variables named in SYNTHGEN_RAY_FORWARD_ENV."""
    environ = os.environ if environ is None else environ
    named = {n.strip() for n in environ.get("SYNTHGEN_RAY_FORWARD_ENV", "").split(",") if n.strip()}
    return {k: v for k, v in environ.items()
            if k in named or (k.startswith(FORWARD_ENV_PREFIXES) and not SECRET_ENV.search(k))}


def _resolve_factory(factory: Callable | str | None) -> Callable:
    if factory is None:
        from generator.engine.backends import make_backend

        return make_backend
    if isinstance(factory, str):  # "package.module:function", importable on every node
        module, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module), attr)
    return factory


def _shards(rows: Iterable[dict], sizes: dict[str, int]) -> Iterator[Shard]:
    """Pending plan rows (in plan order, each with its `shard`) as whole shards, one at a time."""
    held: dict[str, list[dict]] = {}
    for row in rows:
        row = dict(row)
        name = row.pop("shard")
        bucket = held.setdefault(name, [])
        bucket.append(row)
        if len(bucket) == sizes[name]:
            del held[name]
            yield Shard(name=name, round=int(row["round"]), rows=bucket)


def _picklable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Backend kwargs an actor can receive: callables (driver-side progress hooks) stay behind."""
    return {k: v for k, v in kwargs.items() if not callable(v)}


def _cause(exc: BaseException) -> BaseException:
    """The user's error inside a Ray task error, when there is one."""
    cause = getattr(exc, "cause", None)
    while cause is not None and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return cause if isinstance(cause, SynthgenError) else exc


class ShardWorker:
    """The actor: its own backends (one engine per model, built once), running batches of shards on
    the same execution core as the local executor, each record's whole chain of stages on it."""

    def __init__(self, run_dir: str, models: dict, backend_kwargs: dict, factory: Callable | str | None,
                 session: str | None = None, lock: dict | None = None):
        self.run_dir, self.session, self.lock = run_dir, session, lock
        self.models = models
        self.backend_kwargs = backend_kwargs
        self.factory = factory
        self.backends: dict[str, Any] = {}
        self.load_seconds = 0.0
        self._compiled: tuple[str, Any, Any] | None = None  # (spec hash, resolved, pipeline)

    def configure(self, run_dir: str, session: str | None = None, lock: dict | None = None) -> None:
        """Reuse the actor (and its loaded engines) for the next job of the same models."""
        self.run_dir, self.session, self.lock = run_dir, session, lock

    def warm(self, names: list[str]) -> dict[str, dict]:
        from generator.engine.executors.local import build_backends

        self.load_seconds += build_backends(_resolve_factory(self.factory), self.models.values(), names,
                                            self.backend_kwargs, self.backends)
        return {n: {**self.backends[n].describe(), "load_seconds": self.load_seconds} for n in names}

    def _compile(self, spec):
        """The spec resolved and compiled here, once per spec (its files are read on this node)."""
        key = spec.hash()
        if self._compiled is None or self._compiled[0] != key:
            from generator.engine.pipeline.execute import compile_spec
            from generator.engine.planner import resolve_spec

            resolved = resolve_spec(spec)
            self._compiled = (key, resolved, compile_spec(resolved))
        return self._compiled[1], self._compiled[2]

    def run_shards(self, spec, shards: list[Shard], models: list[str]):
        """Run every record of `shards` to its end and write each shard; yield (stats, rows) per shard
        (the last one carries the batch's model calls)."""
        from generator.engine.pipeline.execute import run_records
        from generator.engine.run_folder import RunFolder

        resolved, pipeline = self._compile(spec)
        if self.lock is not None:  # the driver's lock: this actor's writes check it too
            from generator.engine.run_lock import follow

            follow(RunFolder(self.run_dir).path, self.lock)
        self.warm(models)
        landed: list[ShardStats] = []
        rows_of: dict[str, list[dict]] = {}

        def on_record(row: dict) -> None:
            rows_of.setdefault(owner[row["id"]], []).append(row)

        owner = {r["id"]: s.name for s in shards for r in s.rows}
        rows = ({**r, "shard": s.name} for s in shards for r in s.rows)
        stats = run_records(RunFolder(self.run_dir), resolved, pipeline, rows, {s.name: len(s.rows) for s in shards},
                            {m: self.backends[m] for m in models}, self.session, on_record, landed.append)
        if landed:
            landed[-1].model_calls += stats.model_calls
            landed[-1].cache_hits += stats.cache_hits
        for st in landed:
            yield st, rows_of.get(st.name, [])

    def shutdown(self) -> None:
        for name, b in self.backends.items():
            try:
                b.close()
            except Exception as exc:  # noqa: BLE001 - the actor is going away: close the others still
                log.warning("model %s did not close cleanly on its Ray actor (%s: %s)", name, type(exc).__name__, exc)
        self.backends.clear()


class RayExecutor:
    def __init__(self, address: str | None = None, actors: int | None = None, num_cpus_per_actor: float = 1,
                 max_shard_retries: int = 2, backend_factory: Callable | str | None = None,
                 num_gpus_per_actor: float | None = None, batch_records: int | None = None,
                 say: Callable[[str], None] | None = None):
        self.address = address
        self.n_actors = actors
        self.num_cpus_per_actor = num_cpus_per_actor
        self.num_gpus_per_actor = num_gpus_per_actor
        self.max_shard_retries = max_shard_retries
        self.backend_factory = backend_factory
        self.batch_records = batch_records
        self.say = say  # prints the actor sizing line at the start of a run
        self.sizing: ActorSizing | None = None
        self.backends: dict[str, Any] = {}
        self.model_calls = 0
        self._report = ExecReport()
        self.actor_restarts = 0
        self.shard_retries = 0
        self.actors: list[Any] = []
        self._started_ray = False
        self._actor_cls = None
        self._models_key: tuple | None = None

    # -- Ray plumbing
    def _init_ray(self):
        import ray

        if not ray.is_initialized():
            env = forwarded_env()
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "runtime_env": {"env_vars": env} if env else None}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                cpus = max(os.cpu_count() or 1,
                           math.ceil((self.n_actors or 1) * self.num_cpus_per_actor))
                ray.init(num_cpus=cpus, **kwargs)
            self._started_ray = True
        if self._actor_cls is None:
            self._actor_cls = ray.remote(ShardWorker)
        return ray

    def _size(self, ray, job: Job) -> ActorSizing:
        try:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        except Exception as exc:  # noqa: BLE001 - not every client mode lists nodes: one per node then means one
            log.debug("Ray lists no nodes (%s: %s): sizing for one", type(exc).__name__, exc)
            nodes = 1
        self.sizing = size_actors(job.resolved.spec.models, ray.cluster_resources(), len(job.sizes), self.n_actors,
                                  self.num_cpus_per_actor, self.num_gpus_per_actor, nodes)
        if self.say is not None:
            self.say(self.sizing.reason)
        return self.sizing

    def _actor_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.sizing.num_cpus, "max_restarts": 0, "max_task_retries": 0}
        env = forwarded_env()
        share = gpu_memory_share(self.sizing.num_gpus)
        if share is not None and "SYNTHGEN_GPU_MEMORY" not in env:  # the user's own budget wins
            env["SYNTHGEN_GPU_MEMORY"] = share
        if env:  # the driver's settings now, also on a cluster started before they were set
            opts["runtime_env"] = {"env_vars": env}
        if self.sizing.num_gpus:
            opts["num_gpus"] = self.sizing.num_gpus
        return opts

    def _new_actor(self, ray, job: Job):
        return self._actor_cls.options(**self._actor_options()).remote(
            str(job.run_dir), {m.name: m for m in job.resolved.spec.models},
            _picklable_kwargs(job.backend_kwargs), self.backend_factory, job.session, job.lock)

    def _warm(self, ray, actors: list, names: list[str]) -> list[dict]:
        try:
            return ray.get([a.warm.remote(names) for a in actors])
        except Exception as exc:  # RayTaskError wraps e.g. ModelError: show the user's one line
            cause = _cause(exc)
            if cause is not exc:
                raise cause from None
            raise

    # -- Executor interface
    def report(self) -> ExecReport:
        return self._report

    # One loop on purpose: dealing batches, collecting results and replacing dead actors share state
    # (in-flight batches, retries) that would otherwise be passed between several functions.
    def execute(self, job: Job) -> None:
        self._report = ExecReport()
        shards = _shards(job.rows, job.sizes)
        first = next(shards, None)
        if first is None:
            return
        calls_before = self.model_calls
        t0 = time.time()  # Ray start-up counts as load time, like an engine's
        ray = self._init_ray()
        from ray.exceptions import RayActorError

        names = sorted(job.models)
        spec = job.resolved.spec
        key = tuple(sorted(m.name for m in spec.models)), tuple(sorted(_picklable_kwargs(job.backend_kwargs).items(),
                                                                        key=str))
        if self.actors and key != self._models_key:
            self._kill_actors(ray)
        if not self.actors:
            self.actors = [self._new_actor(ray, job) for _ in range(self._size(ray, job).actors)]
            self._models_key = key
        else:
            ray.get([a.configure.remote(str(job.run_dir), job.session, job.lock) for a in self.actors])
        infos = self._warm(ray, self.actors, names)
        self._describe(infos, time.time() - t0)
        # warming actors that already hold the engines takes next to nothing: a reused run's
        # report carries (almost) no load time, a fresh one the whole start-up
        self._report.load_seconds = time.time() - t0
        self._report.backends = {n: b.describe() for n, b in self.backends.items()}
        if job.on_engine_ready:
            job.on_engine_ready()

        shard_size = max(max(job.sizes.values()), 1)
        window = self.batch_records or spec.run.window or 256
        queue: deque[Shard] = deque([first])
        attempts: dict[str, int] = {}
        idle = deque(self.actors)
        running: dict[Any, tuple[Any, list[Shard], set[str]]] = {}  # stream -> (actor, shards, landed)
        left = len(job.sizes) - 1  # shards not yet read from the plan

        def submit() -> None:
            nonlocal left
            while idle and (queue or left):
                actor = idle.popleft()
                per = max(1, min(window // shard_size, math.ceil((len(queue) + left) / len(self.actors))))
                while len(queue) < per and left:  # the plan is read as shards are handed out
                    queue.append(next(shards))
                    left -= 1
                batch = [queue.popleft() for _ in range(min(per, len(queue)))]
                stream = actor.run_shards.options(num_returns="streaming").remote(spec, batch, names)
                running[stream] = (actor, batch, set())

        def landed_shard(st: ShardStats, rows: list[dict]) -> None:
            self.model_calls += st.model_calls
            self._report.model_calls = self.model_calls - calls_before
            self._report.cache_hits += st.cache_hits
            if job.on_record:
                for row in rows:
                    job.on_record(row)
            if job.on_shard:
                job.on_shard(st)

        folder = RunFolder(job.run_dir)
        submit()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=None)
            stream = ready[0]
            actor, batch, landed = running[stream]
            try:
                ref = next(stream)
                st, rows = ray.get(ref)
            except StopIteration:
                del running[stream]
                idle.append(actor)
                submit()
                continue
            except RayActorError as exc:
                del running[stream]
                # shards the dead actor wrote but did not report are final: take them from disk
                for s in batch:
                    if s.name not in landed and storage.exists(folder.shard_path(s.name)):
                        landed.add(s.name)
                        landed_shard(*self._from_disk(folder, s))
                lost = [s for s in batch if s.name not in landed]
                for s in lost:
                    attempts[s.name] = attempts.get(s.name, 0) + 1
                    if attempts[s.name] > self.max_shard_retries:
                        raise SynthgenError(f"shard {s.name} failed on {attempts[s.name]} Ray actors "
                                            f"(last: {str(exc).splitlines()[0]}); rerun the same command "
                                            f"to resume") from None
                self.shard_retries += len(lost)
                queue.extendleft(reversed(lost))
                idle.append(self._replace(ray, job, actor, names))
                submit()
                continue
            except Exception as exc:
                cause = _cause(exc)
                if cause is not exc:
                    raise cause from None
                raise
            landed.add(st.name)
            landed_shard(st, rows)

    @staticmethod
    def _from_disk(folder, shard: Shard) -> tuple[ShardStats, list[dict]]:
        from generator.core.run_layout import read_parquet

        rows = read_parquet(folder.shard_path(shard.name)).to_dicts()
        final = [r for r in rows if r.get("final", True)]
        return ShardStats(name=shard.name, records=len(final)).count(final, time.time()), rows

    def _replace(self, ray, job: Job, dead, names: list[str]):
        """A fresh actor (backends loaded) in place of one that died."""
        try:
            ray.kill(dead)
        except Exception as exc:  # noqa: BLE001 - it is dead or dying: its replacement starts either way
            log.debug("killing a lost Ray actor: %s: %s", type(exc).__name__, exc)
        fresh = self._new_actor(ray, job)
        self.actors = [fresh if a is dead else a for a in self.actors]
        self.actor_restarts += 1
        self._warm(ray, [fresh], names)
        return fresh

    def _describe(self, infos: list[dict], seconds: float) -> None:
        if not infos:
            return
        n = len(self.actors)
        gpus = self.sizing.num_gpus if self.sizing else 0

        class _Described:
            def __init__(self, info: dict):
                self.info = info
                self.load_seconds = seconds

            def describe(self) -> dict:
                return {**{k: v for k, v in self.info.items() if k != "load_seconds"},
                        "executor": "ray", "actors": n, "num_gpus_per_actor": gpus}

        first = infos[0]
        self.backends = {name: _Described(info) for name, info in first.items()}
        # run_spec sums load_seconds over backends: count the (parallel) start-up once
        for i, b in enumerate(self.backends.values()):
            if i:
                b.load_seconds = 0.0

    def _kill_actors(self, ray) -> None:
        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - killed next either way
                log.warning("a Ray actor did not shut down its models (%s: %s); killing it", type(exc).__name__, exc)
            try:
                ray.kill(a)
            except Exception as exc:  # noqa: BLE001 - already gone: nothing left to stop
                log.debug("killing a Ray actor: %s: %s", type(exc).__name__, exc)
        self.actors = []

    def close(self) -> None:
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            self._kill_actors(ray)
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False
