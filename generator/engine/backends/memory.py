"""Several offline models in one run share the machine: each gets a slice of the memory budget.

On a GPU the slice is a `gpu_memory_utilization` fraction; on CPU it is KV-cache bytes. A model
whose `engine:` sets the value keeps it; the others share what is left equally. One offline
model gets no override (the engine defaults give it the whole budget).
"""
from __future__ import annotations

from typing import Any, Iterable

from generator.core.errors import ModelError
from generator.engine.backends.vllm_args import memory_budget, memory_key
from generator.engine.backends.vllm_offline import on_gpu


def split_memory(models: Iterable[Any], gpu: bool, budget: float | int) -> dict[str, dict[str, Any]]:
    """model name -> engine settings to add, for the distinct offline (`backend: vllm`) models."""
    key = memory_key(gpu)
    offline: dict[str, Any] = {}
    for m in models:
        if getattr(m, "backend", "vllm") == "vllm":
            offline.setdefault(m.name, m)
    if len(offline) < 2:
        return {}
    fixed = {n: float(m.engine[key]) for n, m in offline.items() if key in (m.engine or {})}
    free = [n for n in offline if n not in fixed]
    if not free:
        return {}
    left = budget - sum(fixed.values())
    if left <= 0:
        what = "GPU memory fraction" if gpu else "KV-cache bytes"
        raise ModelError(f"models {', '.join(sorted(fixed))} set {key} to {sum(fixed.values()):g}, the whole "
                         f"{what} budget ({budget:g}), leaving nothing for {', '.join(free)}; lower them "
                         f"or set {key} for every model")
    share = left / len(free)
    value: float | int = round(share, 4) if gpu else int(share)
    return {n: {key: value} for n in free}


def shared_engines(models: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """`split_memory` on this machine's device and budget (SYNTHGEN_GPU_MEMORY, SYNTHGEN_KV_CACHE_GB)."""
    models = list(models)
    if len({m.name for m in models if getattr(m, "backend", "vllm") == "vllm"}) < 2:
        return {}  # the common case decides without importing torch
    gpu = on_gpu()
    return split_memory(models, gpu, memory_budget(gpu))
