"""End to end on the embedded model in real offline vLLM (one engine for the whole session)."""
from __future__ import annotations

import json

import jsonschema
import polars as pl
import pytest

from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.config.spec import load_spec
from generator.engine.run_folder import GENERATION_SCHEMA
from helpers import importorskip_ci

pytestmark = pytest.mark.slow


def test_tiny_spec_end_to_end(shared_backend_factory, tmp_path):
    spec = load_spec("specs/tiny.yaml")
    ex = LocalExecutor(backend_factory=shared_backend_factory)
    res = run_spec(spec, out=tmp_path / "run", executor=ex)
    run = tmp_path / "run"
    df = pl.read_parquet(run / "generations" / "*.parquet")
    plan = pl.read_parquet(run / "plan.parquet")
    # one row per planned record, every lineage column, tokens counted (never what the model wrote)
    assert sorted(df["id"].to_list()) == sorted(plan["id"].to_list()) and df.height == 6
    assert set(GENERATION_SCHEMA) <= set(df.columns)
    assert (df["completion_tokens"] > 0).all() and (df["prompt_tokens"] > 0).all()
    assert set(df["finish_reason"].unique()) <= {"stop", "length"}
    assert (df.filter(pl.col("finish_reason") == "length")["status"] == "truncated").all()
    assert df["template_hash"].str.len_chars().min() == 16 and df["persona_ids"].list.len().min() == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["generated"] == 6 and manifest["versions"]["torch"].startswith("2.")
    assert manifest["models"]["smollm2-135m"]["backend"] == "vllm"
    assert res.model_calls == df["attempts"].sum() >= 6  # one call per attempt (cut answers may be retried)
    # loads in `datasets` as Parquet where it is installed
    datasets = importorskip_ci("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(run / "generations" / "*.parquet"), split="train")
    assert ds.num_rows == 6


def test_structured_output_is_valid_json(vllm_backend):
    from generator.core.backend import Request, Sampling

    # every field bounded + compact JSON (engine default): the grammar must close the object long
    # before max_tokens even at several tokens a character, so every answer stops and parses
    schema = {"type": "object", "properties": {"question": {"type": "string", "maxLength": 24},
                                               "answer": {"type": "string", "maxLength": 8}},
              "required": ["question", "answer"], "additionalProperties": False}
    reqs = [Request(id=str(i), messages=({"role": "user", "content": f"A math question about {t}, in JSON."},),
                    sampling=Sampling(temperature=0.7, max_tokens=256, seed=i), json_schema=schema)
            for i, t in enumerate(["apples", "trains", "money", "time"])]
    results = list(vllm_backend.generate(reqs))
    assert sorted(r.id for r in results) == ["0", "1", "2", "3"]
    assert [r.finish_reason for r in results] == ["stop"] * 4
    for r in results:
        jsonschema.validate(json.loads(r.text), schema)


def test_same_batch_same_seed_same_text(vllm_backend):
    from generator.core.backend import Request, Sampling

    reqs = [Request(id=str(i), messages=({"role": "user", "content": "Name a fruit."},),
                    sampling=Sampling(temperature=1.0, max_tokens=12, seed=100 + i)) for i in range(3)]
    a = [r.text for r in vllm_backend.generate(reqs)]
    b = [r.text for r in vllm_backend.generate(reqs)]
    assert a == b
