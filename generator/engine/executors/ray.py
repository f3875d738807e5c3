"""Runs shards on Ray actors, each with its own backend (one vLLM engine per actor, one per GPU).

The driver deals batches of shards to actors; an actor runs a batch through the same
`generate_rows` + request cache as the local executor and writes each shard file itself with
`RunFolder.write_shard` the moment its last record is in, yielding the shard's stats and rows
back to the driver (a streaming actor method), which reports progress and yields `ShardStats`.
The run folder must therefore be on a filesystem every node sees (local disk for a one-machine
Ray; NFS/Lustre/... for a cluster); the request cache is SQLite in WAL mode inside it.

An actor that dies (node lost, OOM, `ray.kill`) costs only the shards it had not written yet:
a replacement actor is started and those shards are resubmitted, and the answers the dead actor
had already cached are replayed, not regenerated. A shard is retried at most `max_shard_retries`
times. Errors a user can act on (`SynthgenError`: model fails to load, server unreachable, disk
full) are raised as themselves, one line, not wrapped in a Ray traceback.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import time
from collections import deque
from typing import Any, Callable, Iterator, Mapping

from generator.core.errors import SynthgenError
from generator.engine.requests import Shard, ShardStats
from generator.engine.run_folder import RunFolder
from generator.engine.executors.base import ExecReport, Job

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


def _picklable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Backend kwargs an actor can receive: callables (driver-side progress hooks) stay behind."""
    return {k: v for k, v in kwargs.items() if not callable(v)}


def _cause(exc: BaseException) -> BaseException:
    """The user's error inside a Ray task error, when there is one."""
    cause = getattr(exc, "cause", None)
    while cause is not None and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return cause if isinstance(cause, SynthgenError) else exc


class _Counting:
    """A backend wrapper that counts the requests sent for each shard (answers, not cache hits)."""

    def __init__(self, inner, owner: dict[str, str], stats: dict[str, ShardStats]):
        self.inner = inner
        self.model = inner.model
        self.window = getattr(inner, "window", None)
        self.owner = owner
        self.stats = stats

    def generate(self, requests, on_result=None):
        for res in self.inner.generate(requests, on_result):
            self.stats[self.owner[res.id.rsplit("#", 1)[0]]].model_calls += 1
            yield res


class ShardWorker:
    """The actor: backends built once, then batches of shards run through the request cache."""

    def __init__(self, run_dir: str, models: dict, schemas: dict, renderers: dict, retries: int,
                 backend_kwargs: dict, factory: Callable | str | None, session: str | None = None):
        from generator.engine.run_folder import RunFolder

        self.folder = RunFolder(run_dir)
        self.session = session
        self.models = models
        self.schemas = schemas
        self.renderers = renderers
        self.retries = retries
        self.backend_kwargs = backend_kwargs
        self.factory = factory
        self.backends: dict[str, Any] = {}
        self.load_seconds = 0.0
        self.cache = None

    def configure(self, run_dir: str, schemas: dict, renderers: dict, retries: int,
                  session: str | None = None) -> None:
        """Reuse the actor (and its loaded engines) for the next job of the same models."""
        from generator.engine.run_folder import RunFolder

        if self.cache is not None and (str(self.folder.path) != str(run_dir) or session != self.session):
            self.cache.close()
            self.cache = None
        self.folder = RunFolder(run_dir)
        self.session = session
        self.schemas, self.renderers, self.retries = schemas, renderers, retries

    def warm(self, names: list[str]) -> dict[str, dict]:
        t0 = time.time()
        factory = _resolve_factory(self.factory)
        for name in names:
            if name not in self.backends:
                self.backends[name] = factory(self.models[name], **self.backend_kwargs)
        self.load_seconds += time.time() - t0
        return {n: {**self.backends[n].describe(), "load_seconds": self.load_seconds} for n in names}

    def run_shards(self, shards: list[Shard]):
        """Generate and write each shard; yield (stats, rows) as each one lands."""
        from generator.engine.requests import ShardAssembler, generate_rows

        if self.cache is None:
            self.cache = self.folder.cache(session=self.session)
        started = time.time()
        stats = {s.name: ShardStats(name=s.name, records=len(s.rows)) for s in shards}
        landed: list[tuple[ShardStats, list[dict]]] = []

        def write(shard: Shard, rows: list[dict]) -> None:
            self.folder.write_shard(shard.name, rows)
            landed.append((stats[shard.name].count(rows, started), rows))

        assembler = ShardAssembler(shards, write)
        owner = {r["id"]: s.name for s in shards for r in s.rows}
        models = sorted({r["model"] for s in shards for r in s.rows})
        self.warm(models)
        for model in models:
            rows = [r for s in shards for r in s.rows if r["model"] == model]
            backend = _Counting(self.backends[model], owner, stats)
            generate_rows(backend, rows, self.cache, self.retries, self.schemas, self.renderers, assembler.add)
        self.cache.flush()  # usage of a batch answered wholly from the cache
        # a shard's stats are complete once every model has run; with one window per batch the
        # shards of a batch land together anyway
        for st, rows in landed:
            yield st, rows

    def shutdown(self) -> None:
        for b in self.backends.values():
            try:
                b.close()
            except Exception:
                pass
        self.backends.clear()
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class RayExecutor:
    def __init__(self, address: str | None = None, actors: int | None = None, num_cpus_per_actor: float = 1,
                 max_shard_retries: int = 2, backend_factory: Callable | str | None = None,
                 num_gpus_per_actor: float | None = None, batch_records: int | None = None):
        self.address = address
        self.n_actors = actors
        self.num_cpus_per_actor = num_cpus_per_actor
        self.num_gpus_per_actor = num_gpus_per_actor
        self.max_shard_retries = max_shard_retries
        self.backend_factory = backend_factory
        self.batch_records = batch_records
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

    def _actor_options(self, ray) -> dict[str, Any]:
        gpus = self.num_gpus_per_actor
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        opts: dict[str, Any] = {"num_cpus": self.num_cpus_per_actor, "max_restarts": 0,
                                "max_task_retries": 0}
        if gpus:
            opts["num_gpus"] = gpus
        return opts

    def _default_actors(self, ray) -> int:
        if self.n_actors:
            return max(int(self.n_actors), 1)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        return max(gpus, 1)

    def _new_actor(self, ray, job: Job):
        return self._actor_cls.options(**self._actor_options(ray)).remote(
            str(job.run_dir), job.models, job.schemas, job.renderers, job.retries,
            _picklable_kwargs(job.backend_kwargs), self.backend_factory, job.session)

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
    def execute(self, job: Job) -> Iterator[ShardStats]:
        self._report = ExecReport()
        if not job.shards:
            return
        calls_before = self.model_calls
        t0 = time.time()  # Ray start-up counts as load time, like an engine's
        ray = self._init_ray()
        from ray.exceptions import RayActorError

        names = sorted({r["model"] for s in job.shards for r in s.rows})
        key = tuple(sorted(job.models)), tuple(sorted(_picklable_kwargs(job.backend_kwargs).items(), key=str))
        if self.actors and key != self._models_key:
            self._kill_actors(ray)
        if not self.actors:
            self.actors = [self._new_actor(ray, job) for _ in range(self._default_actors(ray))]
            self._models_key = key
        else:
            ray.get([a.configure.remote(str(job.run_dir), job.schemas, job.renderers, job.retries, job.session)
                     for a in self.actors])
        infos = self._warm(ray, self.actors, names)
        self._describe(infos, time.time() - t0)
        # warming actors that already hold the engines takes next to nothing: a reused run's
        # report carries (almost) no load time, a fresh one the whole start-up
        self._report.load_seconds = time.time() - t0
        self._report.backends = {n: b.describe() for n, b in self.backends.items()}
        if job.on_engine_ready:
            job.on_engine_ready()

        shard_size = max(max(len(s.rows) for s in job.shards), 1)
        window = self.batch_records or job.backend_kwargs.get("window") or 256
        queue: deque[Shard] = deque(job.shards)
        attempts: dict[str, int] = {s.name: 0 for s in job.shards}
        idle = deque(self.actors)
        running: dict[Any, tuple[Any, list[Shard], set[str]]] = {}  # stream -> (actor, shards, landed)

        def submit() -> None:
            while idle and queue:
                actor = idle.popleft()
                per = max(1, min(window // shard_size, math.ceil(len(queue) / len(self.actors))))
                batch = [queue.popleft() for _ in range(min(per, len(queue)))]
                stream = actor.run_shards.options(num_returns="streaming").remote(batch)
                running[stream] = (actor, batch, set())

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
                    if s.name not in landed and folder.shard_path(s.name).exists():
                        landed.add(s.name)
                        yield self._from_disk(folder, s, job)
                lost = [s for s in batch if s.name not in landed]
                for s in lost:
                    attempts[s.name] += 1
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
            self.model_calls += st.model_calls
            self._report.model_calls = self.model_calls - calls_before
            if job.on_record:
                for row in rows:
                    job.on_record(row)
            yield st

    @staticmethod
    def _from_disk(folder, shard: Shard, job: Job) -> ShardStats:
        import polars as pl

        rows = pl.read_parquet(folder.shard_path(shard.name)).to_dicts()
        st = ShardStats(name=shard.name, records=len(rows))
        for r in rows:
            st.statuses[r["status"]] = st.statuses.get(r["status"], 0) + 1
            st.prompt_tokens += r["prompt_tokens"] or 0
            st.completion_tokens += r["completion_tokens"] or 0
            if job.on_record:
                job.on_record(r)
        return st

    def _replace(self, ray, job: Job, dead, names: list[str]):
        """A fresh actor (backends loaded) in place of one that died."""
        try:
            ray.kill(dead)
        except Exception:
            pass
        fresh = self._new_actor(ray, job)
        self.actors = [fresh if a is dead else a for a in self.actors]
        self.actor_restarts += 1
        self._warm(ray, [fresh], names)
        return fresh

    def _describe(self, infos: list[dict], seconds: float) -> None:
        if not infos:
            return
        n = len(self.actors)

        class _Described:
            def __init__(self, info: dict):
                self.info = info
                self.load_seconds = seconds

            def describe(self) -> dict:
                return {**{k: v for k, v in self.info.items() if k != "load_seconds"},
                        "executor": "ray", "actors": n}

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
            except Exception:
                pass
            try:
                ray.kill(a)
            except Exception:
                pass
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
