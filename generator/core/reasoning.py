"""Reasoning (thinking) traces: how a model marks them, and an answer split into its reasoning and
its text.

A thinking model writes `<think> ... </think>` (its markers) before the answer; a chat template
may open the block itself (DeepSeek-R1), so the completion starts inside the reasoning. The text
is split at the first end marker only: markers that appear later (inside a JSON answer, a code
block) belong to the answer. Reasoning that never ends is all reasoning, with no answer.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Markers:
    start: str = "<think>"
    end: str = "</think>"
    opened: bool = False  # the chat template opens the block: the completion starts inside it

    def key(self) -> list:
        """What the request cache's key holds of them."""
        return [self.start, self.end, self.opened]


# vLLM reasoning-parser names and the markers they read (`deepseek_r1`: the template opens the
# block, so a completion without the end marker is all reasoning; `qwen3`: a completion without
# the start marker is an answer without thinking)
PARSERS: dict[str, Markers] = {
    "deepseek_r1": Markers("<think>", "</think>", opened=True),
    "qwen3": Markers("<think>", "</think>", opened=False),
}
FORCED_END = "\n\n"  # written after a forced end marker, before the answer


@dataclass(frozen=True)
class Split:
    reasoning: str | None  # None: the completion has no reasoning block
    text: str              # the answer ("" when the reasoning never ended)
    ended: bool            # the reasoning block was closed (True when there is none)


def split(completion: str, markers: Markers) -> Split:
    """The completion's reasoning and answer (module docstring)."""
    body = completion.lstrip()
    if body.startswith(markers.start):
        body = body[len(markers.start):]
    elif not markers.opened:
        return Split(None, completion, True)
    else:
        body = completion
    cut = body.find(markers.end)
    if cut < 0:
        return Split(body.strip(), "", False)
    return Split(body[:cut].strip(), body[cut + len(markers.end):].lstrip(), True)


def opens(completion: str, markers: Markers) -> bool:
    """Whether a completion (so far) is inside a reasoning block that has not ended."""
    s = split(completion, markers)
    return s.reasoning is not None and not s.ended


def share(completion_tokens: int, reasoning: str | None, text: str) -> int:
    """An estimate of the completion tokens spent reasoning, for a server that does not count them
    (by the characters of each part)."""
    if not reasoning or completion_tokens <= 0:
        return 0
    total = len(reasoning) + len(text or "")
    return round(completion_tokens * len(reasoning) / total) if total else 0
