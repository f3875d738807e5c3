"""The conversation driver: a user simulator and an assistant take turns.

Exchange k (1-based) is one simulator call (tag `t{k}.user`) and then one assistant call
(`t{k}.assistant`), each sent the conversation so far the moment the previous turn lands. The
number of exchanges is drawn per record from `turns: {min, max}`; the simulator may end earlier
by writing the stop marker (its turn is dropped), or a stop expression may end it after an
exchange. Seeds: `seeds(2k)` for the simulator's turn k and `seeds(2k + 1)` for the assistant's,
where the scheduler passes `seeds = functools.partial(stage_seed, spec seed, record id, stage,
attempt)` (generator.engine.pipeline.context; injected, so the pipeline may import this package).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from generator.engine.dialogue.protocol import Driver, ModelCall, Trajectory, TurnRecord
from generator.engine.planner import hash64


class StopExpr(Protocol):
    """A parsed `stop.expr` (generator.engine.pipeline.expressions.Expression; not imported, as the
    pipeline imports this package)."""

    source: str

    def passes(self, env: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class ConversationSetup:
    spec_seed: int
    rid: str
    stage: str
    attempt: int
    user_prompt: tuple[dict, ...]      # the simulator's rendered template (system and/or user messages)
    seeds: Callable[[int], int]        # sample -> seed: the stage's seed rule for this record and attempt
    assistant_system: str | None = None
    user_model: str | None = None
    assistant_model: str | None = None
    turns_min: int = 2
    turns_max: int = 4
    marker: str | None = "[END]"
    stop: StopExpr | None = None


def drawn_turns(s: ConversationSetup) -> int:
    span = s.turns_max - s.turns_min + 1
    return s.turns_min + hash64(s.spec_seed, "turns", s.rid, s.stage, s.attempt) % span


def simulator_view(prompt: tuple[dict, ...], history: list[dict]) -> list[dict]:
    """The simulator plays the user: its own earlier turns are its `assistant` messages and the
    assistant's answers reach it as `user` messages, after its prompt."""
    flip = {"user": "assistant", "assistant": "user"}
    msgs = [dict(m) for m in prompt]
    if not msgs or msgs[-1]["role"] != "user":
        msgs.append({"role": "user", "content": "Write your first message."})
    return msgs + [{"role": flip[m["role"]], "content": m["content"]} for m in history]


def _record(tag: str, role: str, call: ModelCall, result) -> TurnRecord:
    return TurnRecord(tag=tag, role=role, text=result.text or "", seed=call.seed, model=call.model,
                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                      finish_reason=result.finish_reason, error=result.error)


def conversation(s: ConversationSetup) -> Driver:
    n = drawn_turns(s)
    history: list[dict] = []                 # user/assistant messages only
    traj = Trajectory(messages=[])
    truncated = False
    closing: list[str] = []  # the simulator's turn that ended the chat with the marker

    def finish(status: str, reason: str) -> Trajectory:
        head = [{"role": "system", "content": s.assistant_system}] if s.assistant_system else []
        traj.messages = head + history
        traj.status = "truncated" if status == "ok" and truncated else status
        traj.reason = reason
        traj.final_answer = next((m["content"] for m in reversed(history) if m["role"] == "assistant"), None)
        traj.simulator = {"prompt": simulator_view(s.user_prompt, []), "closing": closing[0] if closing else None}
        return traj

    for k in range(1, n + 1):
        call = ModelCall(messages=tuple(simulator_view(s.user_prompt, history)), model=s.user_model,
                         seed=s.seeds(2 * k), tag=f"t{k}.user",
                         role="user")
        (res,) = yield [call]
        traj.turns.append(_record(call.tag, "user", call, res))
        if res.error:
            return finish("error", f"turn {k}: the user simulator failed: {res.error}")
        text = (res.text or "").strip()
        if s.marker and s.marker in text:
            closing.append(text)
            if k == 1:
                return finish("empty", f"the user simulator ended the chat before it began ({s.marker})")
            return finish("ok", f"the user simulator ended the chat after {k - 1} exchanges")
        if not text:
            return finish("empty", f"turn {k}: the user simulator wrote nothing")
        history.append({"role": "user", "content": text})

        head = [{"role": "system", "content": s.assistant_system}] if s.assistant_system else []
        call = ModelCall(messages=tuple(head + history), model=s.assistant_model,
                         seed=s.seeds(2 * k + 1),
                         tag=f"t{k}.assistant", role="assistant")
        (res,) = yield [call]
        traj.turns.append(_record(call.tag, "assistant", call, res))
        if res.error:
            history.pop()  # a conversation never ends on an unanswered user turn
            return finish("error", f"turn {k}: the assistant failed: {res.error}")
        answer = (res.text or "").strip()
        if not answer:
            history.pop()
            return finish("empty", f"turn {k}: the assistant wrote nothing")
        truncated = truncated or res.finish_reason == "length"
        history.append({"role": "assistant", "content": answer})
        traj.steps = k
        if s.stop is not None and k < n:
            env = {"turn": k, "user": text, "assistant": answer,
                   "chars": sum(len(m["content"]) for m in history),
                   "completion_tokens": sum(t.completion_tokens for t in traj.turns)}
            if s.stop.passes(env):
                return finish("ok", f"the stop rule held after {k} exchanges: {s.stop.source}")
    return finish("ok", f"{n} exchanges (drawn from {s.turns_min}..{s.turns_max})")
