"""One entry of a spec's `models:`: which model, on which backend (offline vLLM, an OpenAI-compatible
server or fleet, a batch API), with what engine arguments, sampling overrides, price and Ray GPUs."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from generator.config.base import SamplingOverride, Strict

DEFAULT_MODEL = "smollm2-135m"


class Price(Strict):
    """What a hosted model charges, in currency units per million tokens (shown by `synthgen usage`)."""

    input_per_mtok: float = Field(ge=0, description="Price per million prompt tokens.")
    output_per_mtok: float = Field(ge=0, description="Price per million completion tokens.")


class ReasoningMarkers(Strict):
    """How a thinking model marks its reasoning in the completion."""

    start: str = Field("<think>", min_length=1, description="The marker that opens the reasoning.")
    end: str = Field("</think>", min_length=1, description="The marker that ends it; the answer follows.")
    opened: bool = Field(False, description="The chat template opens the block itself, so a completion "
                         "starts inside the reasoning (and one without the end marker is all reasoning).")


class ModelConfig(Strict):
    name: str = Field(DEFAULT_MODEL, description="Model alias, Hugging Face folder, or server model name.")
    share: float = Field(1.0, gt=0, description="Relative share of records this model generates.")
    backend: Literal["vllm", "openai", "openai_batch"] = "vllm"
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible server URL; backend: openai also takes a list (a fleet: each "
        "request goes to the least-loaded healthy one).")
    concurrency: int = Field(256, ge=1, description="backend: openai: most requests in flight per endpoint; "
                             "set, it is also where each endpoint's window starts. The window adapts below "
                             "it (grows while answers come back and the server's queue stays short, shrinks "
                             "on 429/503/timeouts and when latency rises with no gain in throughput).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    hedge: bool = Field(True, description="backend: openai with several base_urls: at the end of a run, re-send "
                        "a request queued behind others on one server to a server with room, and keep the first "
                        "answer (the other is cancelled). Off for a hosted API that bills cancelled requests. "
                        "backend: vllm: once the engine drains, start a long structured request's likely retry "
                        "(next seed) beside it, so a cut answer's retry does not trail the run; the answers are "
                        "the same either way.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)
    engine: dict[str, Any] = Field(default_factory=dict,
                                   description="Extra keyword arguments for vllm.LLM (e.g. max_model_len).")
    price: Price | None = Field(None, description="Price per million tokens; cost is shown only when set.")
    license: str | None = Field(None, description="The model's licence id (e.g. apache-2.0), for the dataset "
                                "card; default: what the model's folder states (README front matter, "
                                "config.json, LICENSE).")
    batch_runner: Literal["api", "local"] = Field(
        "api", description="backend: openai_batch only. api: the endpoint at `base_url`; local: vLLM's "
        "run_batch entrypoint on this machine.")
    batch_poll_s: float = Field(10.0, gt=0, description="backend: openai_batch: seconds between status polls.")
    tool_calling: Literal["auto", "native", "constrained"] = Field(
        "auto", description="How agent stages give this model tools (a stage's own `tool_calling` wins). auto: "
        "native where the chat template the backend can read renders `tools` (offline vLLM), else constrained; "
        "say native for a server started with a tool-call parser.")
    reasoning: str | ReasoningMarkers | None = Field(
        None, description="A thinking model: its reasoning is kept apart from the answer (`<stage>.reasoning`). "
        "A vLLM reasoning-parser name (deepseek_r1: the template opens <think>; qwen3: the model writes it) "
        "or {start, end, opened}. backend: openai reads the server's `reasoning_content` and splits the "
        "content by these markers only when the server did not.")
    num_gpus: float | None = Field(
        None, description="--executor ray: GPUs one actor needs for this model (default: the engine's "
        "tensor_parallel_size x pipeline_parallel_size for offline vLLM on a cluster with GPUs, else 0). "
        "A fraction below 1 packs several actors on a GPU.")

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, v: str | None):
        from generator.core.redact import looks_like_key

        if v is not None and looks_like_key(v):  # never echo the value: it may be the key itself
            raise ValueError("this looks like a key, not an environment variable's name; put the key in "
                             "a variable (export MY_API_KEY=...) and write its name here (api_key_env: "
                             "MY_API_KEY)")
        return v

    @field_validator("reasoning")
    @classmethod
    def _parser_name(cls, v):
        from generator.core.reasoning import PARSERS

        if isinstance(v, str) and v not in PARSERS:
            raise ValueError(f"unknown reasoning parser '{v}'; use one of {', '.join(sorted(PARSERS))}, or "
                             f"give the markers: {{start: '<think>', end: '</think>'}}")
        return v

    def markers(self):
        """The reasoning markers (`generator.core.reasoning.Markers`), or None for a model that does not think."""
        from generator.core.reasoning import PARSERS, Markers

        if self.reasoning is None:
            return None
        if isinstance(self.reasoning, str):
            return PARSERS[self.reasoning]
        return Markers(self.reasoning.start, self.reasoning.end, self.reasoning.opened)

    @field_validator("num_gpus")
    @classmethod
    def _ray_gpus(cls, v: float | None):
        if v is None:
            return v
        if v < 0:
            raise ValueError(f"{v:g} is negative; give the GPUs one Ray actor needs for this model "
                             f"(e.g. its tensor_parallel_size), or 0 for a model served over HTTP")
        if v > 1 and v != int(v):
            raise ValueError(f"{v:g}: Ray takes a fraction below 1 or a whole number of GPUs; write "
                             f"{int(v)} or {int(v) + 1}")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | list[str] | None):
        from urllib.parse import urlsplit

        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list; give one URL or several, e.g. [http://h1:8000/v1, http://h2:8000/v1]")
            if len({u.rstrip("/") for u in v}) < len(v):
                raise ValueError("lists the same URL twice; give each server once")
        for u in [v] if isinstance(v, str) else v or []:
            try:
                parts = urlsplit(u)
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError("not a valid URL; write e.g. http://127.0.0.1:8000/v1") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")
        return v

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend: openai needs `base_url` (e.g. http://127.0.0.1:8000/v1)")
        if self.backend == "openai_batch" and isinstance(self.base_url, list):
            raise ValueError("backend: openai_batch takes one `base_url`, not a list")
        if self.backend == "openai_batch" and self.batch_runner == "api" and not self.base_url:
            raise ValueError("backend: openai_batch needs `base_url` (e.g. https://api.example.com/v1), "
                             "or `batch_runner: local`")
        return self
