"""Export layouts for reasoning data, from a run on the scripted backend: `messages` carries a
thinking model's reasoning (as `reasoning_content`, inline, or not at all) and renders through a
chat template that reads `reasoning_content`; `rl` writes one verifiable problem a row; both load
with `datasets.load_dataset`."""
from __future__ import annotations

import jinja2
import polars as pl
import pytest

from generator.export.dataset import ExportOptions, export_run
from generator.export.rows import ExportError
from helpers import importorskip_ci
from test_reasoning import keep_project, run_keep

datasets = importorskip_ci("datasets")

# a chat template that knows reasoning (the way thinking models' templates render it)
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n"
            "{% if m.role == 'assistant' and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n"
            "{% endif %}{{ m.content }}\n{% endfor %}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keep")
    run_keep(keep_project(tmp, "{correct: 2}"), tmp / "run")
    return tmp / "run"


def load(path):
    return datasets.load_dataset(str(path))


def test_messages_carry_reasoning_content_and_render_through_a_chat_template(run_dir, tmp_path):
    gens = pl.read_parquet(run_dir / "generations" / "*.parquet").filter(pl.col("status") == "ok")
    res = export_run(run_dir, tmp_path / "ds", ExportOptions(layout="messages", test_ratio=0.0))
    ds = load(tmp_path / "ds")["train"]
    assert ds.num_rows == gens.height == res.splits["train"]
    template = jinja2.Environment().from_string(TEMPLATE)
    for row, want in zip(ds, gens.iter_rows(named=True)):
        last = row["messages"][-1]
        assert last == {"role": "assistant", "content": want["text"], "reasoning_content": want["reasoning"],
                        "train": True}
        assert row["messages"][-2]["role"] == "user" and "reasoning_content" not in row["messages"][-2]
        assert row["messages"][-2]["train"] is False
        rendered = template.render(messages=row["messages"])
        assert rendered.endswith(f"<|assistant|>\n<think>\n{want['reasoning']}\n</think>\n\nFinal answer: 1\n")


def test_reasoning_inline_or_dropped(run_dir, tmp_path):
    export_run(run_dir, tmp_path / "inline", ExportOptions(layout="messages", test_ratio=0.0, reasoning="inline"))
    export_run(run_dir, tmp_path / "drop", ExportOptions(layout="messages", test_ratio=0.0, reasoning="drop"))
    inline, drop = load(tmp_path / "inline")["train"], load(tmp_path / "drop")["train"]
    a = inline[0]["messages"][-1]
    assert a["content"].startswith("<think>\ntry ") and a["content"].endswith("</think>\n\nFinal answer: 1")
    assert "reasoning_content" not in a
    assert drop[0]["messages"][-1] == {"role": "assistant", "content": "Final answer: 1", "train": True}


def test_rl_layout_one_problem_a_row_with_reference_and_pass_rate(run_dir, tmp_path):
    gens = pl.read_parquet(run_dir / "generations" / "*.parquet").filter(pl.col("status") == "ok")
    export_run(run_dir, tmp_path / "rl", ExportOptions(layout="rl", test_ratio=0.0))
    ds = load(tmp_path / "rl")["train"]
    assert ds.num_rows == gens["id"].n_unique() and sorted(ds["id"]) == sorted(gens["id"].unique().to_list())
    rates = dict(gens.select("id", "check.pass_rate").unique("id").iter_rows())
    for row in ds:
        assert row["reward_model"] == {"ground_truth": "1", "style": "rule"}
        assert row["data_source"] == "k" and row["verifier"] == "check:reference:number"
        assert row["pass_rate"] == rates[row["id"]] and row["prompt"][-1]["role"] == "user"
        assert row["prompt"][-1]["content"].startswith("Solve")
    export_run(run_dir, tmp_path / "rl2", ExportOptions(layout="rl", test_ratio=0.0, reference="problem.text",
                                                        data_source="math"))
    other = load(tmp_path / "rl2")["train"][0]
    assert other["reward_model"]["ground_truth"] == "Problem. Final answer: 1" and other["data_source"] == "math"
    with pytest.raises(ExportError, match="--reference nope: the run has no such column"):
        export_run(run_dir, tmp_path / "rl3", ExportOptions(layout="rl", reference="nope"))


def test_the_card_shows_the_problems_pass_rates(run_dir, tmp_path):
    gens = pl.read_parquet(run_dir / "generations" / "*.parquet").filter(pl.col("final"))
    export_run(run_dir, tmp_path / "ds", ExportOptions(layout="rl", test_ratio=0.0))
    card = (tmp_path / "ds" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("| check |") and "pass rate" not in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    rates = gens["check.pass_rate"]
    assert cells[1] == f"{gens.height:,}" and cells[2] == f"{rates.mean():.3f}"
    assert sum(int(c) for c in cells[3:]) == gens.height
