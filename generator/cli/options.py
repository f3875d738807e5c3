"""Option helpers shared by the command modules."""
from __future__ import annotations

import os

import click


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
