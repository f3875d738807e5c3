"""A conversation's or agent's messages as one fixed, readable text: what a judge reads and what a
`scope: transcript` regex searches.

    [system]
    You are a support assistant.

    [user]
    My card was declined.

    [assistant 1]
    -> call call_1_1 lookup_card({"last4": "1234"})

    [tool lookup_card, call_1_1, failed]
    error: the tool broke

Every assistant message is a numbered turn (`[assistant k]`, tool-call-only steps included), so
per-turn scores line up with the assistant messages of the kept conversation. Fitting a budget is
deterministic and happens only when the whole does not fit: first every message body longer than
a fifth of the budget is shortened to it (its head and tail kept, the cut marked), then, if that
is still too long, middle messages are elided with a marker, keeping the first and the last ones
(added from both ends, the end first, while they fit).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

MIN_BUDGET = 1000     # characters: the smallest budget `render` is guaranteed to fit
_SEP = "\n\n"
_NAME_CHARS = 48      # tool names, call ids and roles are cut in headers: a header stays short


@dataclass(frozen=True)
class Rendered:
    text: str
    turns: int                 # assistant turns in the transcript
    shown: tuple[int, ...]     # assistant turns (1-based) that appear in `text`, shortened or not


@dataclass(frozen=True)
class _Block:
    header: str
    body: str
    turn: int | None           # the assistant turn it is, if any

    def text(self, cap: int | None = None) -> str:
        return f"{self.header}\n{shorten(self.body, cap) if cap is not None else self.body}"


def _content(value: Any) -> str:
    """A message's content as text (None, a string, or a list of parts with `text`)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in value)
    return str(value)


def _short(name: Any) -> str:
    text = " ".join(str(name or "?").split())
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS - 3] + "..."


def call_line(call: dict) -> str:
    """One tool call of an assistant message: `-> call <id> <name>(<arguments as written>)`."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, sort_keys=True)
    return f"-> call {_short(call.get('id'))} {_short(fn.get('name'))}({args})"


def assistant_text(message: dict) -> str:
    """An assistant turn as a check or judge reads it: its text, then one line per tool call."""
    lines = [c for c in [_content(message.get("content")).strip()] if c]
    lines += [call_line(c) for c in message.get("tool_calls") or []]
    return "\n".join(lines)


def assistant_turns(messages: list[dict]) -> list[str]:
    """Every assistant turn's text, in order (what `scope: every` checks; `[-1]` is `scope: last`)."""
    return [assistant_text(m) for m in messages if m.get("role") == "assistant"]


def failed_call_ids(tool_calls: str | list | None) -> set[str]:
    """Ids of the failed calls in an agent stage's `tool_calls` lineage (JSON text or a list)."""
    records = json.loads(tool_calls) if isinstance(tool_calls, str) else tool_calls or []
    return {r["call_id"] for r in records if isinstance(r, dict) and not r.get("ok", True)}


def _blocks(messages: list[dict], failed: set[str]) -> list[_Block]:
    out: list[_Block] = []
    turn = 0
    for m in messages:
        role = str(m.get("role") or "?")
        if role == "assistant":
            turn += 1
            out.append(_Block(f"[assistant {turn}]", assistant_text(m) or "(empty)", turn))
        elif role == "tool":
            cid = m.get("tool_call_id")
            flag = ", failed" if cid is not None and cid in failed else ""
            ident = f", {_short(cid)}" if cid is not None else ""
            out.append(_Block(f"[tool {_short(m.get('name'))}{ident}{flag}]",
                              _content(m.get("content")).strip() or "(empty)", None))
        else:
            out.append(_Block(f"[{_short(role)}]", _content(m.get("content")).strip() or "(empty)", None))
    return out


def shorten(text: str, cap: int) -> str:
    """`text` in at most `cap` characters: its head (two thirds) and tail, the cut marked."""
    if len(text) <= cap:
        return text
    cut = len(text)
    while True:  # the marker names how much was cut, and its own length depends on that number
        mark = f"\n[... {cut} characters cut ...]\n"
        keep = max(cap - len(mark), 0)
        if len(text) - keep == cut:
            break
        cut = len(text) - keep
    head = keep * 2 // 3
    return text[:head] + mark + text[len(text) - (keep - head):]


def _elision(blocks: list[_Block]) -> str:
    turns = [b.turn for b in blocks if b.turn is not None]
    which = ""
    if turns:
        which = f": assistant turn {turns[0]}" if len(turns) == 1 else f": assistant turns {turns[0]}-{turns[-1]}"
    return f"[... {len(blocks)} message{'s' if len(blocks) != 1 else ''} elided{which} ...]"


def render(messages: list[dict], budget: int | None = None, failed: Iterable[str] = ()) -> Rendered:
    """The transcript of `messages` (OpenAI form), in at most `budget` characters when given
    (`budget >= MIN_BUDGET`); `failed`: ids of tool calls whose result is an error."""
    blocks = _blocks(messages, set(failed))
    turns = sum(b.turn is not None for b in blocks)
    texts = [b.text() for b in blocks]
    if budget is None or len(_SEP.join(texts)) <= budget:
        return Rendered(_SEP.join(texts), turns, tuple(range(1, turns + 1)))
    if budget < MIN_BUDGET:
        raise ValueError(f"a transcript budget of {budget} characters is below {MIN_BUDGET}")
    texts = [b.text(budget // 5) for b in blocks]
    if len(_SEP.join(texts)) <= budget:
        return Rendered(_SEP.join(texts), turns, tuple(range(1, turns + 1)))

    n = len(blocks)
    head, tail = 1, 1  # n >= 3 here: two capped blocks always fit

    def size(h: int, t: int) -> int:
        kept = texts[:h] + [_elision(blocks[h:n - t])] + texts[n - t:]
        return len(_SEP.join(kept))

    grew = True
    while grew and head + tail < n:
        grew = False
        if head + tail < n and size(head, tail + 1) <= budget:
            tail, grew = tail + 1, True
        if head + tail < n and size(head + 1, tail) <= budget:
            head, grew = head + 1, True
    if head + tail >= n:  # everything fitted after all
        return Rendered(_SEP.join(texts), turns, tuple(range(1, turns + 1)))
    kept = blocks[:head] + blocks[n - tail:]
    text = _SEP.join(texts[:head] + [_elision(blocks[head:n - tail])] + texts[n - tail:])
    return Rendered(text, turns, tuple(b.turn for b in kept if b.turn is not None))
