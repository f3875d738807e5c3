"""Probe settings: one object holds every knob, so every arm and seed trains and evaluates alike."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from generator.core.errors import SynthgenError

PROBE_NAME = "probe.json"
PROBE_SCHEMA_VERSION = 1
DEFAULT_DIVERSITY_METRICS = ("distinct_n", "compression_ratio")


class ProbeSettings(BaseModel):
    """Everything that decides what an arm's numbers are. Identical for every arm of one probe."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m"
    seeds: list[int] = Field(default_factory=lambda: [0])
    # training: max_steps wins; else token_budget / (batch * grad_accum * seq_len) steps
    max_steps: int | None = None
    token_budget: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 256
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    save_steps: int | None = None  # default: about 5 checkpoints per arm
    save_total_limit: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # evaluation
    eval_real: Path | None = None
    eval_text_field: str | None = None
    eval_text_template: str | None = None
    eval_user_template: str | None = None
    eval_assistant_template: str | None = None
    eval_docs: int = 64
    eval_synthetic_docs: int = 64
    eval_seq_len: int | None = None  # default: seq_len
    eval_batch_size: int = 8
    gsm8k: Path | None = None
    gsm8k_n: int = 16
    gsm8k_max_new_tokens: int = 128
    gsm8k_prompt: str = "{question}\n"
    lm_eval_tasks: list[str] = Field(default_factory=list)
    lm_eval_limit: int | None = None
    diversity_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_DIVERSITY_METRICS))
    keep_models: bool = True

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed is needed; give --seeds 1 or more")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}; list each seed once")
        return v

    @field_validator("batch_size", "grad_accum", "seq_len", "eval_batch_size", "save_total_limit")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1; give 1 or more")
        return v

    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def steps(self) -> int:
        if self.max_steps is not None:
            if self.max_steps < 1:
                raise SynthgenError("--max-steps must be at least 1; give 1 or more")
            return self.max_steps
        if self.token_budget is not None:
            return max(1, math.ceil(self.token_budget / self.tokens_per_step()))
        return 50

    def warmup_steps(self) -> int:
        return int(round(self.warmup_fraction * self.steps()))

    def checkpoint_every(self) -> int:
        return self.save_steps or max(1, self.steps() // 5)

    def eval_len(self) -> int:
        return self.eval_seq_len or self.seq_len

    def resolved(self) -> dict:
        """The settings as written into probe.json, with derived values spelled out."""
        d = json.loads(self.model_dump_json())
        d["derived"] = {"steps": self.steps(), "tokens_per_step": self.tokens_per_step(),
                        "train_tokens": self.steps() * self.tokens_per_step(),
                        "warmup_steps": self.warmup_steps(), "checkpoint_every": self.checkpoint_every(),
                        "eval_seq_len": self.eval_len()}
        return d

    def fingerprint(self) -> str:
        """Hash of what changes the numbers (not keep_models, which only decides what stays on disk)."""
        d = self.resolved()
        d.pop("keep_models", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def seed_list(seeds: int, first: int) -> list[int]:
    return list(range(first, first + seeds))
