"""Sizing Ray actors (`size_actors`): what each actor asks for and how many a run starts, from a
spec's model entries and a cluster's resources (plain dicts: no Ray needed)."""
from __future__ import annotations

import pytest

from generator.config.models import ModelConfig
from generator.core.errors import SynthgenError
from generator.engine.executors.ray_sizing import ActorSizing, gpu_memory_share, model_gpus, size_actors


def _vllm(name: str = "m", **kw) -> ModelConfig:
    return ModelConfig(name=name, **kw)


def _http(name: str = "api", **kw) -> ModelConfig:
    return ModelConfig(name=name, backend="openai", base_url="http://127.0.0.1:8000/v1", **kw)


def test_an_actor_needs_the_tensor_parallel_size_of_an_offline_gpu_model():
    tp2 = _vllm(engine={"tensor_parallel_size": 2})
    assert model_gpus(tp2, gpu_cluster=True) == 2
    assert model_gpus(_vllm(engine={"tensor_parallel_size": 2, "pipeline_parallel_size": 2}), True) == 4
    assert model_gpus(tp2, gpu_cluster=False) == 0  # vLLM on CPU
    assert model_gpus(_http(), gpu_cluster=True) == 0  # served elsewhere
    assert model_gpus(_http(num_gpus=1), gpu_cluster=True) == 1  # said explicitly
    assert model_gpus(_vllm(num_gpus=0.5, engine={"tensor_parallel_size": 2}), True) == 0.5


def test_default_actors_fill_the_clusters_gpus():
    s = size_actors([_vllm(engine={"tensor_parallel_size": 2})], {"GPU": 8, "CPU": 64}, shards=100)
    assert (s.actors, s.num_gpus) == (4, 2)
    assert "4 actors" in s.reason and "2 GPUs each" in s.reason and "8 GPUs" in s.reason
    # 7 GPUs hold 3 actors of 2; a spare GPU is left, not half-used
    assert size_actors([_vllm(engine={"tensor_parallel_size": 2})], {"GPU": 7}, shards=100).actors == 3
    # a fraction packs actors on a GPU
    assert size_actors([_vllm(num_gpus=0.25)], {"GPU": 2, "CPU": 4}, shards=100).actors == 8


def test_an_actor_hosting_several_models_asks_for_the_widest():
    models = [_vllm("small"), _vllm("big", engine={"tensor_parallel_size": 4}), _http()]
    s = size_actors(models, {"GPU": 8, "CPU": 32}, shards=100)
    assert (s.actors, s.num_gpus) == (2, 4)


def test_http_models_use_no_gpu_and_one_actor_per_cpu_capped_by_shards():
    s = size_actors([_http()], {"GPU": 8, "CPU": 16}, shards=100)
    assert (s.actors, s.num_gpus) == (16, 0) and "no GPU" in s.reason and "16 CPUs" in s.reason
    s = size_actors([_http()], {"CPU": 16}, shards=3)
    assert s.actors == 3 and "one per shard (3)" in s.reason
    assert size_actors([_http()], {"CPU": 16}, shards=100, num_cpus=4).actors == 4


def test_vllm_on_cpu_runs_one_actor_per_node():
    assert size_actors([_vllm()], {"CPU": 64}, shards=100, nodes=3).actors == 3
    assert size_actors([_vllm(), _http()], {"CPU": 2}, shards=100).actors == 1


def test_explicit_actors_and_gpus_win():
    s = size_actors([_vllm(engine={"tensor_parallel_size": 2})], {"GPU": 8}, shards=1, actors=6)
    assert (s.actors, s.num_gpus) == (6, 2) and "(--actors)" in s.reason
    assert size_actors([_http()], {"GPU": 4, "CPU": 8}, shards=100, num_gpus=1).actors == 4


def test_a_model_wider_than_the_cluster_is_one_line_with_the_fix():
    with pytest.raises(SynthgenError) as err:
        size_actors([_vllm("big", engine={"tensor_parallel_size": 8})], {"GPU": 4, "CPU": 32}, shards=10)
    msg = str(err.value)
    assert "big needs 8 GPUs per actor" in msg and "has 4" in msg and "num_gpus" in msg and "\n" not in msg


@pytest.mark.parametrize("value, fix", [(-1, "is negative"), (1.5, "write 1 or 2")])
def test_bad_num_gpus_is_one_line(tmp_path, value, fix):
    from generator.config.spec import load_spec
    from generator.core.errors import SpecError

    (tmp_path / "s.yaml").write_text("name: s\ntopics:\n  - items: [A]\ntemplates:\n  - template: math/word_problem\n"
                                     f"models:\n  - name: m\n    num_gpus: {value}\n")
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "s.yaml")
    msg = str(err.value)
    assert "num_gpus" in msg and fix in msg and "s.yaml:8" in msg and "\n" not in msg


def test_actors_sharing_a_gpu_get_their_share_of_its_memory(monkeypatch):
    """num_gpus 0.5: each actor's engines take 0.45 of the GPU (the 0.9 budget halved), or the
    second engine to start on that GPU finds too little free memory and vLLM refuses it."""
    from generator.engine.executors.ray import RayExecutor

    monkeypatch.delenv("SYNTHGEN_GPU_MEMORY", raising=False)
    ex = RayExecutor(actors=2)
    ex.sizing = ActorSizing(actors=2, num_cpus=1, num_gpus=0.5, reason="")
    assert ex._actor_options()["runtime_env"]["env_vars"]["SYNTHGEN_GPU_MEMORY"] == "0.4500"
    monkeypatch.setenv("SYNTHGEN_GPU_MEMORY", "0.3")  # the user's own budget wins
    assert ex._actor_options()["runtime_env"]["env_vars"]["SYNTHGEN_GPU_MEMORY"] == "0.3"
    monkeypatch.delenv("SYNTHGEN_GPU_MEMORY")
    ex.sizing = ActorSizing(actors=2, num_cpus=1, num_gpus=1, reason="")  # a whole GPU: the default budget
    assert "SYNTHGEN_GPU_MEMORY" not in ex._actor_options().get("runtime_env", {}).get("env_vars", {})
    # the share scales with the fraction; whole GPUs and no GPU keep the default budget
    assert (gpu_memory_share(0.25), gpu_memory_share(1), gpu_memory_share(2), gpu_memory_share(0)) == \
        ("0.2250", None, None, None)
