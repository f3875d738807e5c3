"""Diversity over whole conversations and over tool use."""
from __future__ import annotations

import json
import math

import pytest

from scoring.conversations import conversation_diversity, conversation_text, tool_use_diversity


def convo(*calls, text="hello there"):
    msgs = [{"role": "user", "content": text}]
    for i, (name, args) in enumerate(calls):
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "1"})
    msgs.append({"role": "assistant", "content": "done"})
    return msgs


def test_tool_use_diversity_counts_tools_patterns_and_calls():
    convs = [convo(("add", {"a": 1}), ("mul", {"a": 2})), convo(("add", {"a": 1}), ("mul", {"a": 2})),
             convo(("mul", {"a": 3}), ("add", {"a": 1})), convo()]
    d = tool_use_diversity(convs)
    assert d["calls"] == 6 and d["distinct_tools"] == 2 and d["tool_counts"] == {"add": 3, "mul": 3}
    assert d["tool_entropy"] == pytest.approx(1.0)
    assert d["distinct_patterns"] == 2 and d["pattern_ratio"] == pytest.approx(2 / 3)
    assert d["distinct_calls_ratio"] == pytest.approx(3 / 6)  # add{a:1}, mul{a:2}, mul{a:3}
    assert d["no_call_rate"] == pytest.approx(0.25) and d["calls_per_conversation"] == pytest.approx(1.5)
    skewed = tool_use_diversity([convo(("add", {}), ("add", {}), ("add", {}), ("mul", {}))])
    p = [0.75, 0.25]
    assert skewed["tool_entropy"] == pytest.approx(-sum(x * math.log(x) for x in p) / math.log(2))
    assert tool_use_diversity([convo()])["tool_entropy"] == 0.0


def test_conversation_diversity_scores_whole_conversations():
    same = [convo(text="where is my card") for _ in range(4)]
    varied = [convo(text=t) for t in ("where is my card", "reset my pin please", "a refund for a double charge",
                                      "exchange rate for euros today")]
    a, b = conversation_diversity(same), conversation_diversity(varied)
    assert b["distinct_n"] > a["distinct_n"] and a["conversations"] == 4
    assert a["mean_turns"] == 2 and a["distinct_turn_counts"] == 1
    text = conversation_text(convo(("add", {"a": 1})))
    assert 'assistant: add({"a": 1})' in text and text.startswith("user: hello there")
    assert conversation_text(convo(("add", {})), roles=["assistant"]).splitlines() == ["assistant: add({})",
                                                                                      "assistant: done"]
