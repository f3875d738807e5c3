"""Backends: offline vLLM (default), an OpenAI-compatible server and batch files (a scripted stand-in for tests lives in `generator.testing`)."""
from __future__ import annotations

from typing import Any

from generator.core.backend import Backend, Request, Result, Sampling


def make_backend(model_cfg: Any, **kwargs: Any) -> Backend:
    """Build the backend a spec's model entry asks for (`generator.config.models.ModelConfig`)."""
    if model_cfg.backend == "openai":
        from generator.engine.backends.openai_http import OpenAIBackend

        kwargs.setdefault("concurrency", model_cfg.concurrency)
        if "concurrency" in model_cfg.model_fields_set:  # the user knows the server: start there
            kwargs.setdefault("start_window", model_cfg.concurrency)
        kwargs.setdefault("hedge", model_cfg.hedge)
        return OpenAIBackend(model=model_cfg.name, base_url=model_cfg.base_url,
                             api_key_env=model_cfg.api_key_env, **kwargs)
    if model_cfg.backend == "openai_batch":
        from generator.engine.backends.openai_batch import OpenAIBatchBackend

        return OpenAIBatchBackend(model=model_cfg.name, base_url=model_cfg.base_url,
                                  api_key_env=model_cfg.api_key_env, runner=model_cfg.batch_runner,
                                  engine=model_cfg.engine, poll_s=model_cfg.batch_poll_s, **kwargs)
    kwargs.pop("run_dir", None)  # only the batch backend keeps files in the run folder
    kwargs.setdefault("hedge", model_cfg.hedge)
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend

    return VLLMOfflineBackend(model_cfg.name, engine=model_cfg.engine, **kwargs)


__all__ = ["Backend", "Request", "Result", "Sampling", "make_backend"]
