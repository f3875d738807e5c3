"""Sizing Ray actors: how many a run starts, the GPUs and CPUs each asks Ray for, and the share of a
GPU's memory each one's engines take when several actors share that GPU. Plain values in and out
(model entries, a cluster's resources): no Ray needed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from generator.core.errors import SynthgenError


def model_gpus(model, gpu_cluster: bool) -> float:
    """GPUs one actor needs for `model` (a spec's model entry): its `num_gpus`, else, for an
    offline vLLM engine on a cluster with GPUs, the engine's tensor x pipeline parallel size, else 0
    (a model served over HTTP, or vLLM on CPU)."""
    if getattr(model, "num_gpus", None) is not None:
        return float(model.num_gpus)
    local_engine = model.backend == "vllm" or (model.backend == "openai_batch" and model.batch_runner == "local")
    if not (gpu_cluster and local_engine):
        return 0.0
    engine = model.engine or {}
    return float(int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1)))


@dataclass(frozen=True)
class ActorSizing:
    actors: int
    num_gpus: float  # per actor
    num_cpus: float  # per actor
    reason: str  # one line for the run's first lines


def size_actors(models: Iterable[Any], resources: Mapping[str, float], shards: int, actors: int | None = None,
                num_cpus: float = 1, num_gpus: float | None = None, nodes: int = 1) -> ActorSizing:
    """How many actors a run starts and what each asks Ray for. Every actor hosts every model of
    the spec, side by side on the same GPUs (`build_backends` splits their memory), so an actor
    needs the most any one model needs. Without `actors`: as many as the cluster holds (its GPUs
    // GPUs per actor; with no GPU per actor, its CPUs // `num_cpus`, or one per node when a model
    runs vLLM on CPU, which takes a node's cores and memory), at most one per shard."""
    models = list(models)
    gpu_cluster = resources.get("GPU", 0) > 0
    need = {m.name: model_gpus(m, gpu_cluster) for m in models}
    per = float(num_gpus) if num_gpus is not None else max(need.values(), default=0.0)
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    widest = max(need, key=need.get) if need and num_gpus is None else None
    each = f"{per:g} GPU{'' if per == 1 else 's'} each" if per else "no GPU"
    if actors:
        return ActorSizing(int(actors), per, num_cpus, f"ray: {int(actors)} actors (--actors), {each}")
    if per:
        fit = int(gpus // per + 1e-9)
        if fit < 1:
            what = f"model {widest} needs {per:g} GPUs per actor" if widest else f"an actor needs {per:g} GPUs"
            raise SynthgenError(f"{what} but the Ray cluster has {gpus:g}; lower its num_gpus (or the engine's "
                                f"tensor_parallel_size) or add GPUs to the cluster")
        held = f"the cluster's {gpus:g} GPUs hold {fit}"
    elif any(m.backend == "vllm" or (m.backend == "openai_batch" and m.batch_runner == "local") for m in models):
        fit = max(int(nodes), 1)
        held = f"vLLM on CPU: one per node, {fit} node{'' if fit == 1 else 's'}"
    else:
        fit = max(int(cpus // max(num_cpus, 1e-9)), 1)
        held = f"the cluster's {cpus:g} CPUs hold {fit}"
    n = max(min(fit, int(shards)), 1)
    capped = f", one per shard ({shards})" if n < fit else ""
    return ActorSizing(n, per, num_cpus, f"ray: {n} actor{'' if n == 1 else 's'}, {each} ({held}{capped}); "
                                        f"set --actors to change")


def gpu_memory_share(num_gpus: float) -> str | None:
    """SYNTHGEN_GPU_MEMORY for an actor given `num_gpus` of a GPU, or None for whole GPUs (the default
    budget). Actors sharing a GPU: each engine takes its share of the memory budget, or the second
    one to start finds too little free ("less than desired GPU memory utilization")."""
    if 0 < num_gpus < 1:
        return f"{0.9 * num_gpus:.4f}"
    return None
