"""Diversity of whole conversations and of tool use (conversation and agent stages).

Conversations are OpenAI-style message lists. `conversation_text` flattens one into a text (roles,
contents, tool calls as `name(arguments)`), so every text metric (`score_texts`) applies to whole
conversations; `tool_use_diversity` measures which tools are used and in which call patterns.
"""
from __future__ import annotations

import collections
import json
import math
from typing import Any, Sequence


def _calls(messages: Sequence[dict]) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    pass
            out.append((str(fn.get("name")), json.dumps(args, sort_keys=True, ensure_ascii=False)))
    return out


def conversation_text(messages: Sequence[dict], roles: Sequence[str] | None = None) -> str:
    """One conversation as text, in order; `roles` keeps only those roles (e.g. ["assistant"])."""
    lines = []
    for m in messages:
        if roles is not None and m.get("role") not in roles:
            continue
        if m.get("content"):
            lines.append(f"{m.get('role')}: {m['content']}")
        for name, args in _calls([m]):
            lines.append(f"{m.get('role')}: {name}({args})")
    return "\n".join(lines)


def conversation_diversity(conversations: Sequence[Sequence[dict]], metrics: Sequence[str] = ("distinct_n",
                           "compression_ratio"), roles: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Text metrics over whole conversations (each one document), plus turn statistics."""
    from scoring.metrics import score_texts

    texts = [conversation_text(c, roles) for c in conversations]
    turns = [sum(1 for m in c if m.get("role") in ("user", "assistant") and m.get("content")) for c in conversations]
    out: dict[str, Any] = {name: r.value for name, r in score_texts(texts, metrics, seed=seed).items()}
    out["conversations"] = len(texts)
    out["mean_turns"] = sum(turns) / len(turns) if turns else 0.0
    out["distinct_turn_counts"] = len(set(turns))
    return out


def tool_use_diversity(conversations: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """How varied the tool use is.

    distinct_tools: tools called at least once; tool_entropy: Shannon entropy of the calls over tools,
    normalised to [0, 1] (1: every tool equally often); distinct_patterns: distinct call sequences
    (the tool names in order) among conversations with calls, and pattern_ratio that over those
    conversations; distinct_calls_ratio: distinct (tool, arguments) pairs over all calls;
    calls_per_conversation: the mean over all conversations; no_call_rate: the share with no call."""
    per = [_calls(c) for c in conversations]
    calls = [c for cs in per for c in cs]
    counts = collections.Counter(name for name, _ in calls)
    total = sum(counts.values())
    entropy = -sum(n / total * math.log(n / total) for n in counts.values()) if total else 0.0
    norm = entropy / math.log(len(counts)) if len(counts) > 1 else 0.0
    patterns = [tuple(name for name, _ in cs) for cs in per if cs]
    return {
        "conversations": len(per),
        "calls": total,
        "distinct_tools": len(counts),
        "tool_counts": dict(counts.most_common()),
        "tool_entropy": norm,
        "distinct_patterns": len(set(patterns)),
        "pattern_ratio": len(set(patterns)) / len(patterns) if patterns else 0.0,
        "distinct_calls_ratio": len(set(calls)) / total if total else 0.0,
        "calls_per_conversation": total / len(per) if per else 0.0,
        "no_call_rate": sum(1 for cs in per if not cs) / len(per) if per else 0.0,
    }
