"""The Ray executor on a local Ray: same record ids as the local executor, survives a killed actor.

Actors import nothing from tests/: backend factories here are shipped to them by value."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import polars as pl
import pytest

from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.config.spec import load_spec
from helpers import importorskip_ci

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ray = importorskip_ci("ray")


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    import ray.cloudpickle as cp

    cp.register_pickle_by_value(sys.modules[__name__])
    yield
    cp.unregister_pickle_by_value(sys.modules[__name__])


def fake_factory(model_cfg, **_):
    return FakeBackend(model=model_cfg.name)


class _SlowFake(FakeBackend):
    window = 2

    def generate(self, requests, on_result=None):
        for res in super().generate(requests, on_result):
            time.sleep(0.15)
            yield res


def slow_fake_factory(model_cfg, **_):
    return _SlowFake(model=model_cfg.name)


def _ids(run) -> list[str]:
    return pl.read_parquet(run / "generations" / "*.parquet")["id"].to_list()


def test_ray_fake_backend_matches_local(proj, tmp_path):
    from generator.engine.executors.ray import RayExecutor

    was_running = ray.is_initialized()

    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2"})
    run_spec(spec, out=tmp_path / "local", executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()))
    seen: list[str] = []
    spec_events = []
    ex = RayExecutor(actors=2, backend_factory=fake_factory)
    try:
        res = run_spec(spec, out=tmp_path / "ray", executor=ex,
                       progress=lambda ev, d: seen.append(d["id"]) if ev == "record" else spec_events.append(ev))
        assert "engine_ready" in spec_events
    finally:
        ex.close()
    # it started Ray, so it shut it down (when a session cluster ran first, it left that running)
    assert ray.is_initialized() == was_running
    ray_ids = _ids(tmp_path / "ray")
    assert sorted(ray_ids) == sorted(_ids(tmp_path / "local")) and len(set(ray_ids)) == 10
    assert sorted(seen) == sorted(ray_ids)  # progress reported in the driver, once per row
    assert res.model_calls == 10 and res.generated == 10
    local = pl.read_parquet(tmp_path / "local" / "generations" / "*.parquet").sort("id")
    remote = pl.read_parquet(tmp_path / "ray" / "generations" / "*.parquet").sort("id")
    assert local.select("id", "text", "status").equals(remote.select("id", "text", "status"))
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["models"]["smollm2-135m"]["executor"] == "ray"
    assert manifest["timings"][-1]["model_calls"] == 10


def test_ray_replaces_a_killed_actor(proj, tmp_path, ray_session):
    """Kill an actor while it works: its unwritten shards go to a fresh actor, nothing lost or doubled."""
    from generator.engine.executors.ray import RayExecutor

    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2", "run.window": "2"})
    ex = RayExecutor(actors=2, backend_factory=slow_fake_factory)
    killed: list[str] = []

    def on_event(ev, data):
        if ev == "shard" and not killed:  # the first shard landed: kill the other busy actor
            victim = ex.actors[-1]
            killed.append(str(victim))
            ray.kill(victim)

    try:
        res = run_spec(spec, out=tmp_path / "run", executor=ex, progress=on_event)
        # the victim is replaced when it had work in flight or is handed more (a race with the end)
        assert killed and ex.actor_restarts <= 1
    finally:
        ex.close()
    ids = _ids(tmp_path / "run")
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")["id"].to_list()
    assert sorted(ids) == sorted(plan) and len(ids) == len(set(ids)) == 10
    assert res.generated == 10


class _Dies(FakeBackend):
    """Kills its actor's process once: mid-batch (`during`: nothing written) or after the batch's
    shards are written but before the actor reports them (`after`)."""

    window = 2

    def __init__(self, model, marker, when, run=None):
        super().__init__(model=model)
        self.marker, self.when, self.run = marker, when, run

    def _landed(self, answers: int) -> None:
        """Wait (in this backend's stream thread) until the scheduler wrote a shard and published
        `answers` answers into the run folder: the kill then comes at a known point, not at a
        thread's whim."""
        from generator.core.run_layout import read_answers

        # this actor's own: the other actor writes shards and publishes answers too
        records = {r.id.split("#")[0] for r in self.calls[:2]}
        keys = {r.payload_hash(self.model) for r in self.calls[:answers]}
        deadline = time.time() + 60
        while time.time() < deadline:
            files = list((self.run / "generations").glob("*.parquet"))
            written = set(pl.concat([pl.read_parquet(f, columns=["id"]) for f in files])["id"]) if files else set()
            published = read_answers(self.run, ["key"])
            if records <= written and published is not None and keys <= set(published["key"]):
                return
            time.sleep(0.05)
        raise AssertionError("the actor's first shard and answers never landed")

    def _die(self):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)

    def stream(self, feed, on_result=None):
        for res in super().stream(feed, on_result):
            if self.when == "during" and len(self.calls) == 4 and not os.path.exists(self.marker):
                self._landed(3)  # shard 1 (records 1, 2) written, record 3 cached; record 4 in flight
                self._die()
            yield res
        if self.when == "after":  # the feed closes once every record ended and its shards are written
            self._die()


def dying_factory(model_cfg, marker=None, when="after", run=None, **_):
    return _Dies(model_cfg.name, marker, when, run)


def test_ray_resubmits_the_shards_of_a_dead_actor(proj, tmp_path, monkeypatch, ray_session):
    import functools

    monkeypatch.setenv("SYNTHGEN_PUBLISH_SECONDS", "0.2")  # the third answer is published while the 4th waits

    from generator.engine.executors.ray import RayExecutor

    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2", "run.window": "4"})
    marker = str(tmp_path / "died")
    ex = RayExecutor(actors=2, backend_factory=functools.partial(dying_factory, marker=marker, when="during",
                                                                 run=tmp_path / "run"))
    try:
        res = run_spec(spec, out=tmp_path / "run", executor=ex)
        # its batch was two shards: the first was written before it died (kept from disk), the
        # second was resubmitted to the replacement actor
        assert ex.actor_restarts == 1 and ex.shard_retries == 1
    finally:
        ex.close()
    ids = _ids(tmp_path / "run")
    assert os.path.exists(marker) and len(ids) == len(set(ids)) == 10 and res.generated == 10
    # 10 - the 2 records of the shard it wrote - the answer it published before dying (the
    # replacement replays published answers for free; a dead actor's calls are not counted): the
    # calls after the kill are exactly the requests never published
    assert res.model_calls == 7
    from generator.core.run_layout import read_answers

    published = read_answers(tmp_path / "run", ["key"])  # the dead actor's 3 and the replacement's 7, once each
    assert published.height == published["key"].n_unique() == 10


def test_ray_shards_written_by_a_dead_actor_are_kept(proj, tmp_path, ray_session):
    import functools

    from generator.engine.executors.ray import RayExecutor

    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2", "run.window": "4"})
    marker = str(tmp_path / "died")
    ex = RayExecutor(actors=1, backend_factory=functools.partial(dying_factory, marker=marker, when="after"))
    seen: list[str] = []
    try:
        res = run_spec(spec, out=tmp_path / "run", executor=ex,
                       progress=lambda ev, d: seen.append(d["id"]) if ev == "record" else None)
        assert ex.actor_restarts == 1 and ex.shard_retries == 0  # nothing had to be regenerated
    finally:
        ex.close()
    ids = _ids(tmp_path / "run")
    assert os.path.exists(marker) and sorted(ids) == sorted(seen) and len(set(ids)) == 10
    assert res.model_calls == 6  # the dead actor's 4 answers were not counted by it: 10 - 4


def test_ray_real_model_two_actors(tmp_path, monkeypatch, ray_session):
    """The real path once: a two-stage pipeline (problem -> solution) on two actors, each its own
    vLLM engine on the embedded model; every record is written once, with both stages' lineage,
    its stages run on one actor (kills are tested on the fake backend above, at known points)."""
    importorskip_ci("vllm")
    from generator.engine.executors.ray import RayExecutor

    monkeypatch.setenv("SYNTHGEN_KV_CACHE_GB", "0.25")  # two small engines side by side
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(PIPELINE_SPEC)
    spec = load_spec(spec_path)
    ex = RayExecutor(actors=2)
    try:
        res = run_spec(spec, out=tmp_path / "run", executor=ex, score=False)
    finally:
        ex.close()
    ids = _ids(tmp_path / "run")
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    final = df.filter(pl.col("final"))
    assert sorted(final["id"].to_list()) == sorted(plan["id"].to_list()) and final["id"].n_unique() == 12
    assert res.generated == 12 and res.model_calls >= 12
    assert set(df["problem.status"]) <= {"ok", "truncated", "empty", "error"}
    # a problem that came back usable was handed to the solution stage, on the same record's row
    usable = final.filter(pl.col("problem.status").is_in(["ok", "truncated"]))
    assert usable.height and usable["solution.status"].null_count() == 0
    assert (usable["problem.completion_tokens"] > 0).all() and (usable["solution.prompt_tokens"] > 0).all()
    assert all(p and t and t in p for p, t in zip(usable["solution.prompt"], usable["problem.text"]))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["pipeline"]["order"] == ["problem", "solution"]
    info = manifest["models"]["smollm2-135m"]
    assert info["backend"] == "vllm" and info["executor"] == "ray" and info["actors"] == 2


PIPELINE_SPEC = """name: ray-pipeline
seed: 5
topics:
  - items:
      - {topic: Arithmetic, subtopic: adding fractions}
      - {topic: Arithmetic, subtopic: long division}
      - {topic: Geometry, subtopic: area of a triangle}
generations_per_topic: 4
personas: {file: core, sample: 10}
models:
  - name: smollm2-135m
sampling: {temperature: 0.8, top_p: 0.95, max_tokens: 32}
stages:
  - name: problem
    kind: generate
    template: pipeline/math_problem
  - name: solution
    kind: generate
    template: pipeline/solve
    output: true
run: {shard_size: 2, window: 4}
"""


def test_default_actor_count_comes_from_the_cluster_and_is_printed_first(proj, tmp_path, ray_session):
    """No --actors: the spec's model runs vLLM (here faked) on a CPU-only local Ray, which takes a
    node's cores and memory, so one actor per node; the line saying so comes before any record."""
    from generator.engine.executors.ray import RayExecutor

    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2"})
    said: list[str] = []
    ex = RayExecutor(backend_factory=fake_factory, say=said.append)
    try:
        res = run_spec(spec, out=tmp_path / "ray", executor=ex,
                       progress=lambda ev, d: said.append(ev) if ev == "record" else None)
        assert ray.cluster_resources().get("GPU", 0) == 0
    finally:
        ex.close()
    assert said[0].startswith("ray: 1 actor, no GPU (vLLM on CPU: one per node, 1 node)"), said[:2]
    assert said.count("record") == res.generated == 10
    info = json.loads((tmp_path / "ray" / "manifest.json").read_text())["models"]["smollm2-135m"]
    assert info["actors"] == 1 and info["num_gpus_per_actor"] == 0


def test_ray_runs_a_pipeline_with_the_same_rows_as_local(tmp_path, ray_session):
    """specs/math_verified.yaml (4 stages, rejection sampling) on 2 actors: every stage of a record
    runs on one actor, and the rows (every attempt, sorted) equal the local executor's."""
    from pathlib import Path

    from generator.engine.executors.ray import RayExecutor

    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "math_verified.yaml", {"run.shard_size": "3"})
    run_spec(spec, out=tmp_path / "local", limit=12, score=False,
             executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(model=c.name)))
    ex = RayExecutor(actors=2, backend_factory=fake_factory)
    try:
        res = run_spec(spec, out=tmp_path / "ray", executor=ex, limit=12, score=False)
    finally:
        ex.close()
    local = pl.read_parquet(tmp_path / "local" / "generations" / "*.parquet").sort("id", "attempts")
    remote = pl.read_parquet(tmp_path / "ray" / "generations" / "*.parquet").sort("id", "attempts")
    assert remote.height >= 12 and remote.filter(pl.col("final")).height == res.generated == 12
    assert remote.columns == local.columns
    for col in local.columns:
        assert remote[col].to_list() == local[col].to_list(), col
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["pipeline"]["order"] == ["problem", "solution", "resolve", "check"]
