"""`synthgen probe`: a few real training steps of the embedded model on CPU, on tiny mixes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"

pytestmark = pytest.mark.slow

# A fixed tiny corpus repeated many times: a few steps on it must lower the training loss.
REAL_TEXT = "The farmer has 12 apples. She gives 5 to her friend. She has 12 - 5 = 7 apples left.\n#### 7"
SYN_TEXT = "Tom buys 3 pens at 2 dollars each. He pays 3 * 2 = 6 dollars in total.\n#### 6"
TINY = ["--seq-len", "64", "--batch-size", "2", "--lr", "1e-3", "--warmup", "0", "--eval-docs", "4",
        "--eval-synthetic-docs", "4", "--eval-batch-size", "4", "--gsm8k-n", "2", "--gsm8k-max-new-tokens", "8",
        "--diversity-metric", "distinct_n", "--quiet"]


def _need_gsm8k() -> Path:
    if not (GSM8K / "test.jsonl").is_file():
        msg = f"{GSM8K} is missing (../shared/data beside the repository)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return GSM8K / "test.jsonl"


@pytest.fixture(scope="module")
def mixes(tmp_path_factory) -> Path:
    """A sweep (1:0 and 1:1) written by `build_mix` from a repeated real text and a fake run folder."""
    import polars as pl

    from generator.mix import MixConfig, build_mix

    d = tmp_path_factory.mktemp("probe-data")
    real = d / "real.jsonl"
    real.write_text("".join(json.dumps({"text": REAL_TEXT}) + "\n" for _ in range(60)))
    run = d / "run" / "generations"
    run.mkdir(parents=True)
    pl.DataFrame([{"id": f"syn-{i:03d}", "topic_id": i % 3, "status": "ok", "text": SYN_TEXT}
                  for i in range(60)]).write_parquet(run / "part-00000.parquet")
    cfg = MixConfig.model_validate({"real": [{"path": str(real), "name": "real"}],
                                    "synthetic": [{"run": str(d / "run"), "name": "syn"}],
                                    "ratios": ["1:0", "1:1"], "total_tokens": 1200, "tokenizer": "smollm2-135m",
                                    "format": "jsonl", "seed": 3, "out": str(d / "mix")})
    build_mix(cfg)
    return d / "mix"


@pytest.fixture(scope="module")
def probe_out(mixes, tmp_path_factory) -> tuple[Path, str]:
    from generator.cli.main import main

    gsm = _need_gsm8k()
    out = tmp_path_factory.mktemp("probe") / "p"
    # one checkpoint per arm (each is a 135M-parameter write); resuming is the killed-probe test's
    res = CliRunner().invoke(main, ["probe", str(mixes), "--out", str(out), "--seeds", "1", "--max-steps", "4",
                                    "--save-steps", "4", "--eval-real", str(gsm), "--gsm8k", str(gsm), *TINY],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_probe_sweep_trains_evaluates_and_reports(probe_out):
    from generator.probe import load_probe

    out, output = probe_out
    probe = load_probe(out)
    assert probe["status"] == "complete" and probe["probe_version"] == 1
    assert [a["name"] for a in probe["arms"]] == ["ratio-1_0", "ratio-1_1"]
    assert probe["settings"]["derived"]["steps"] == 4 and probe["settings"]["seq_len"] == 64
    assert probe["arms"][0]["synthetic_fraction"] == 0.0 and probe["arms"][1]["synthetic_fraction"] > 0.3
    assert probe["arms"][0]["diversity"] is None and "distinct_n" in probe["arms"][1]["diversity"]
    assert probe["eval"]["synthetic"]["docs"] == 4 and probe["eval"]["gsm8k"]["problems"] == 2
    for arm in probe["arms"]:
        (run,) = arm["runs"]
        assert run["status"] == "done" and run["train"]["steps"] == 4
        losses = [x["loss"] for x in run["train"]["losses"]]
        assert len(losses) == 4 and losses[-1] < losses[0], losses
        assert set(run["metrics"]) >= {"real_ppl", "synthetic_ppl", "gsm8k_accuracy", "train_loss_last"}
        assert run["eval"]["gsm8k"]["n"] == 2 and len(run["eval"]["gsm8k"]["predictions"]) == 2
        assert arm["summary"]["real_ppl"]["n"] == 1 and arm["summary"]["real_ppl"]["sd"] is None
        assert not (Path(run["model_dir"]).parent / "checkpoints").exists()  # removed once final/ is saved
    assert set(probe["base"]["metrics"]) >= {"real_ppl", "synthetic_ppl", "gsm8k_accuracy"}
    # the trained arm fits its synthetic text better than the untouched base model
    assert probe["arms"][1]["runs"][0]["metrics"]["synthetic_ppl"] < probe["base"]["metrics"]["synthetic_ppl"]
    assert (out / "probe.png").stat().st_size > 10_000
    assert "ratio-1_1" in output and "wrote" in output
    assert {d["metric"] for d in probe["differences"]} >= {"real_ppl", "gsm8k_accuracy"}


def test_checkpoint_differs_from_base(probe_out):
    from safetensors.torch import load_file

    from generator.probe.train import resolve_base

    out, _ = probe_out
    base = load_file(str(resolve_base("smollm2-135m") / "model.safetensors"))
    final = out / "arms" / "ratio-1_1" / "seed-0" / "final"
    trained = load_file(str(final / "model.safetensors"))
    assert set(trained) >= {k for k in base if k != "lm_head.weight"}
    changed = [k for k in base if k in trained and not (trained[k].float() == base[k].float()).all()]
    assert len(changed) > len(base) // 2, f"{len(changed)} of {len(base)} tensors changed"
    assert json.loads((final / "train.json").read_text())["steps"] == 4


def test_evaluation_is_reproducible(probe_out):
    from generator.probe import ProbeSettings
    from generator.probe.data import gsm8k_problems, real_eval_items
    from generator.probe.evaluate import evaluate_model

    out, _ = probe_out
    probe = json.loads((out / "probe.json").read_text())
    s = ProbeSettings(**{k: v for k, v in probe["settings"].items() if k != "derived"})
    final = out / "arms" / "ratio-1_1" / "seed-0" / "final"
    real = real_eval_items(s.eval_real, "text", s.eval_docs, None, None, None, None)
    problems = gsm8k_problems(s.gsm8k, s.gsm8k_n)
    # evaluated again, the checkpoint scores exactly what the sweep recorded
    a = evaluate_model(final, s, "text", real, [], problems, seed=0)
    recorded = probe["arms"][1]["runs"][0]["eval"]
    assert a["real_ppl"] == recorded["real_ppl"] and a["gsm8k"] == recorded["gsm8k"]
    assert len(a["gsm8k"]["predictions"]) == s.gsm8k_n == 2


def test_killed_probe_resumes_from_last_checkpoint(mixes, tmp_path):
    from generator.probe import ProbeSettings, run_probe
    from generator.probe.train import last_checkpoint

    out = tmp_path / "p"
    args = [sys.executable, "-m", "generator.cli", "probe", str(mixes / "ratio-1_0"), "--out", str(out),
            "--seeds", "1", "--max-steps", "4", "--save-steps", "2", "--eval-synthetic-docs", "0",
            "--eval-docs", "4", "--seq-len", "64", "--batch-size", "2", "--warmup", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = out / "arms" / "ratio-1_0" / "seed-0" / "checkpoints"
    deadline = time.time() + 900  # generous: a loaded 2-core machine takes minutes to load and step
    try:
        while last_checkpoint(ckpt_dir)[1] < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 900 s"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpt, step = last_checkpoint(ckpt_dir)
    assert ckpt is not None and 2 <= step < 4
    assert not (out / "arms" / "ratio-1_0" / "seed-0" / "final").exists()
    settings = ProbeSettings(seeds=[0], max_steps=4, save_steps=2, eval_synthetic_docs=0, eval_docs=4,
                             seq_len=64, batch_size=2, warmup_fraction=0.0)
    probe = run_probe([mixes / "ratio-1_0"], settings, out, log=lambda m: None, progress=False)
    train = probe["arms"][0]["runs"][0]["train"]
    assert train["resumed_from_step"] == step
    assert train["first_step_this_process"] == step + 1
    assert train["steps"] == 4
    assert [x["step"] for x in train["losses"]] == [1, 2, 3, 4]  # the killed run's log carried over


def test_held_out_synthetic_that_empties_an_arm_is_refused(mixes, tmp_path):
    """Holding out every synthetic row would make the 1:1 arm train on real text only."""
    from generator.cli.main import main

    res = CliRunner().invoke(main, ["probe", str(mixes), "--out", str(tmp_path / "p"), "--seeds", "1",
                                    "--max-steps", "1", *TINY[:10], "--eval-synthetic-docs", "60", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "leaves no synthetic training data in ratio-1_1" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p" / "probe.json").exists()
