"""What a dialogue driver yields, what it is sent back, and what it returns.

    driver: Generator[list[ModelCall | ToolCall], list[Result | ToolResult], Trajectory]

Each yield is a batch of actions that may run in parallel; the scheduler sends back their results
in the same order (a `Result` for a `ModelCall`, a `ToolResult` for a `ToolCall`). The return value
(`StopIteration.value`) is the finished `Trajectory`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, Union

from generator.core.backend import Result


@dataclass(frozen=True)
class ModelCall:
    """One chat request; the scheduler builds the Request (id, cache, retries) from it."""

    messages: tuple[dict, ...]       # OpenAI-style, as the model is to see them
    model: str | None                # None: the record's model
    seed: int
    json_schema: dict | None = None
    tag: str = ""                    # e.g. "t3.user": unique within the stage run, part of the request id
    role: str = "assistant"          # whose sampling applies: "user" (simulator), "assistant", "tool" (simulated)
    tools: tuple[dict, ...] | None = None  # native tool calling only: the OpenAI tool definitions


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str                   # as the model wrote them (JSON text)


@dataclass
class ToolResult:
    call_id: str
    content: str
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


Action = Union[ModelCall, ToolCall]
Outcome = Union[Result, ToolResult]
Driver = Generator[list[Action], list[Outcome], "Trajectory"]


@dataclass
class TurnRecord:
    """Lineage of one model call of the trajectory."""

    tag: str
    role: str                        # user | assistant | tool (a simulated tool)
    text: str
    seed: int
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None


@dataclass
class ToolRecord:
    call_id: str
    name: str
    arguments: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    step: int = 0


@dataclass
class Trajectory:
    """A finished conversation or agent run, kept in OpenAI message form."""

    messages: list[dict]             # system/user/assistant (with tool_calls) / tool (with tool_call_id)
    turns: list[TurnRecord] = field(default_factory=list)
    tool_calls: list[ToolRecord] = field(default_factory=list)
    status: str = "ok"               # ok, truncated, tool_error, max_steps, empty, invalid_json, error
    reason: str | None = None
    tools: list[dict] | None = None  # OpenAI tool definitions offered (agent stages)
    final_answer: str | None = None  # agent: the final answer; conversation: the last assistant text
    steps: int = 0                   # model calls of the assistant (agent) / exchanges (conversation)
    # conversation: the user simulator's prompt as it saw it and its closing turn (the stop marker's
    # turn, not part of `messages`), so an export can give the simulator's side
    simulator: dict | None = None

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "truncated", "tool_error")

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def completion_tokens(self) -> int:
        return sum(t.completion_tokens for t in self.turns)

    def view(self) -> dict[str, Any]:
        """What later stages' templates and expressions read as `<stage>.<field>`."""
        return {"text": self.final_answer, "messages": self.messages, "status": self.status,
                "reason": self.reason, "steps": self.steps, "turns": len(self.turns),
                "tool_calls": len(self.tool_calls), "failed_calls": sum(not c.ok for c in self.tool_calls),
                "completion_tokens": self.completion_tokens}

    def columns(self) -> dict[str, Any]:
        """Row columns (JSON text where nested): `conversation` and `tools` are what the `messages`
        export layout reads; `turns` and `tool_calls` are the lineage."""
        dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
        return {"conversation": dump(self.messages), "tools": dump(self.tools) if self.tools else None,
                "simulator": dump(self.simulator) if self.simulator else None,
                "turns": dump([asdict(t) for t in self.turns]),
                "tool_calls": dump([asdict(c) for c in self.tool_calls]),
                "status": self.status, "reason": self.reason, "text": self.final_answer}


def drive(driver: Driver, act: Callable[[Action], Outcome]) -> Trajectory:
    """Runs a driver to the end, one action at a time (tests, simple synchronous callers). The
    scheduler instead runs each yielded batch in parallel on its engine and tool runner."""
    try:
        batch = next(driver)
        while True:
            batch = driver.send([act(a) for a in batch])
    except StopIteration as stop:
        return stop.value
