"""`synthgen probe` without a model: answer extraction, settings, summaries, input errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from generator.core.errors import SynthgenError
from generator.probe import ProbeSettings
from generator.probe.data import discover_arms
from generator.probe.evaluate import extract_number, gold_number
from generator.probe.report import arm_summary, differences, load_probe


def test_gsm8k_numbers():
    assert gold_number("She has 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert gold_number("#### 1,250") == "1250"
    assert gold_number("no marker 5") is None
    assert extract_number("so 3 + 4 = 7\n#### 7\nQuestion: 12 eggs") == "7"
    assert extract_number("the total is 12.0 dollars.\n\nNext: 99") == "12"
    assert extract_number("about -3.5 degrees") == "-3.5"
    assert extract_number("no digits here") is None


def test_settings_steps_and_fingerprint():
    s = ProbeSettings(token_budget=10_000, batch_size=2, seq_len=64)
    assert s.steps() == 79 and s.tokens_per_step() == 128 and s.checkpoint_every() == 15
    assert ProbeSettings(max_steps=7, token_budget=10_000).steps() == 7
    assert ProbeSettings().steps() == 50 and ProbeSettings().warmup_steps() == 5
    a, b = ProbeSettings(seeds=[0, 1]), ProbeSettings(seeds=[0, 1], keep_models=False)
    assert a.fingerprint() == b.fingerprint() != ProbeSettings(seeds=[0, 2]).fingerprint()
    with pytest.raises(ValueError):
        ProbeSettings(seeds=[1, 1])


def _runs(vals):
    return [{"status": "done", "metrics": {"real_ppl": v}, "wall_s": {"total": 1.0}} for v in vals]


def test_summary_and_differences_against_spread():
    s = arm_summary(_runs([10.0, 12.0, 11.0]) + [{"status": "pending"}])
    assert s["real_ppl"]["mean"] == 11.0 and s["real_ppl"]["sd"] == 1.0 and s["real_ppl"]["n"] == 3
    arms = [{"name": "a", "summary": s}, {"name": "b", "summary": arm_summary(_runs([14.0, 15.0, 16.0]))},
            {"name": "c", "summary": arm_summary(_runs([11.5, 12.5, 13.5]))}]
    d = {x["arm"]: x for x in differences(arms) if x["metric"] == "real_ppl"}
    assert d["b"]["delta"] == 4.0 and d["b"]["spread"] == 2.0 and d["b"]["exceeds"] is True
    assert d["c"]["delta"] == 1.5 and d["c"]["exceeds"] is False
    one = differences([{"name": "a", "summary": arm_summary(_runs([1.0]))},
                       {"name": "b", "summary": arm_summary(_runs([2.0]))}])
    assert one[0]["spread"] is None and one[0]["exceeds"] is None


def test_bad_inputs_are_one_line_errors(tmp_path):
    from generator.cli.main import main

    with pytest.raises(SynthgenError, match="no mix_manifest.json here or in the parent folder"):
        discover_arms([tmp_path])
    res = CliRunner().invoke(main, ["probe", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no mix_manifest.json" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["probe", str(tmp_path), "--lr-scheduler", "zigzag"])
    assert res.exit_code == 2 and "'zigzag' is not a scheduler" in res.output
    (tmp_path / "mix_manifest.json").write_text(json.dumps({"format": "megatron", "mixes": []}))
    with pytest.raises(SynthgenError, match="Megatron mixes hold token ids"):
        discover_arms([tmp_path])
    with pytest.raises(SynthgenError, match="not a synthgen probe result"):
        (tmp_path / "probe.json").write_text("{}")
        load_probe(tmp_path)
