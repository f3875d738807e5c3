"""`synthgen probe`: train the same small base model on each mix and measure what the data did.

Modules: `config` (ProbeSettings: every knob, identical for every arm), `data` (arms from
`synthgen mix` output, held-out synthetic text, the user's real held-out set, GSM8K problems),
`encode` (token ids, with the mix's counting conventions), `train` (transformers' Trainer,
resumable), `evaluate` (perplexity, GSM8K accuracy, lm-evaluation-harness), `report` (summaries
over seeds, differences against the spread, table, plot, probe.json), `run` (the orchestration)
and `command` (the click command). See docs/probe.md.
"""
from __future__ import annotations

from generator.probe.config import PROBE_NAME, PROBE_SCHEMA_VERSION, ProbeSettings, seed_list
from generator.probe.report import load_probe

__all__ = ["PROBE_NAME", "PROBE_SCHEMA_VERSION", "ProbeSettings", "load_probe", "run_probe", "seed_list"]


def run_probe(*args, **kwargs):
    """See generator.probe.run.run_probe (imported lazily: it pulls in torch and transformers)."""
    from generator.probe.run import run_probe as _run

    return _run(*args, **kwargs)
