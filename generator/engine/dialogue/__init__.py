"""Conversation and agent stages as pure driver coroutines (docs/conversations.md).

A driver yields batches of actions (`ModelCall`, `ToolCall`) and is sent their results in the
same order; it returns the finished `Trajectory`. It holds no threads and knows no engine: the
pipeline scheduler turns each `ModelCall` into a backend request and runs each `ToolCall` on a
`ToolRunner`, so every turn goes onto the same continuous engine as the other stages.
"""
from generator.engine.dialogue.protocol import (ModelCall, ToolCall, ToolRecord, ToolResult, Trajectory,
                                                TurnRecord, drive)

__all__ = ["ModelCall", "ToolCall", "ToolRecord", "ToolResult", "Trajectory", "TurnRecord", "drive"]
