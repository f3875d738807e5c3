"""Option helpers shared by the command modules."""
from __future__ import annotations

import os

import click

from generator.core import storage
from generator.core.errors import SynthgenError


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    """`--set KEY=VALUE` options as a dict of spec overrides."""
    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise click.UsageError(f"--set '{v}' is not KEY=VALUE; write e.g. --set seed=7")
        k, _, val = v.partition("=")
        out[k.strip()] = val
    return out


def quiet_engine_logs(verbose: bool) -> None:
    """Keep vLLM's and transformers' own logs off the terminal unless --verbose asks for them."""
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TQDM_DISABLE", "1")


class RunPath(click.Path):
    """A run folder argument: a local path, checked exactly as `click.Path` checks it (same
    messages), or an fsspec URL (`s3://bucket/runs/NAME`), passed on as the URL string once a run
    folder is found there. A URL holding none (or a storage error: no bucket, no credentials) is
    one line naming it, exit 2. `shards`: the command reads generations/, so a URL needs at least
    one shard; otherwise it needs the run's manifest.json."""

    def __init__(self, *, shards: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.shards = shards

    def convert(self, value, param, ctx):
        if not storage.is_url(value):
            return super().convert(value, param, ctx)
        from generator.core.run_layout import require_generation_files, require_run_folder

        try:
            (require_generation_files if self.shards else require_run_folder)(value)
        except SynthgenError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)
