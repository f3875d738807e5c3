"""Judge stages: the rubric prompt, its structured-output schema, and reading the verdict.

A judge reads one answer (a generate stage's text) or one transcript (a conversation or agent
stage, rendered by `generator.engine.dialogue.transcript`); with `per_turn` it also scores each
assistant turn shown in the transcript, in the same structured answer (an object keyed
`turn_1`, `turn_2`, ... naming exactly the turns shown, so the scores line up by name, not by
position)."""
from __future__ import annotations

import json
from typing import Any

SYSTEM = ("You are a strict, fair grader of AI assistant answers. Answer only with the JSON object "
          "the schema asks for.")


# A one-sentence reason. Bounded, like every shipped schema, so that structured decoding closes the
# verdict within the judge's max_tokens (a three-criterion verdict is at most ~600 characters).
REASON = {"type": "string", "minLength": 1, "maxLength": 160}


def rubric_schema(criteria: list) -> dict:
    item = {"type": "object", "additionalProperties": False,
            "properties": {"reason": REASON, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["reason", "score"]}
    return {"type": "object", "additionalProperties": False, "properties": {c.name: item for c in criteria},
            "required": [c.name for c in criteria]}


COMPARE_SCHEMA = {"type": "object", "additionalProperties": False,
                  "properties": {"reason": REASON, "better": {"type": "string", "enum": ["A", "B"]}},
                  "required": ["reason", "better"]}


# a per-turn reason: shorter than a criterion's, so a long conversation's verdict stays bounded
TURN_REASON = {"type": "string", "minLength": 1, "maxLength": 80}
TURN_ITEM = {"type": "object", "additionalProperties": False,
             "properties": {"reason": TURN_REASON, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
             "required": ["reason", "score"]}


def turn_key(turn: int) -> str:
    return f"turn_{turn}"


def transcript_schema(criteria: list, shown: tuple[int, ...] | None) -> dict:
    """The rubric, with `turns` first (one item per assistant turn shown) when `shown` is given:
    the judge reads each turn before it rates the whole."""
    schema = rubric_schema(criteria)
    if shown is None:
        return schema
    keys = [turn_key(k) for k in shown]
    turns = {"type": "object", "additionalProperties": False, "properties": {k: TURN_ITEM for k in keys},
             "required": keys}
    return {**schema, "properties": {"turns": turns, **schema["properties"]}, "required": ["turns", *schema["required"]]}


def transcript_messages(criteria: list, instruction: str, transcript: str,
                        shown: tuple[int, ...] | None) -> list[dict[str, str]]:
    lines = [f"- {c.name}: {c.description}" for c in criteria]
    whole = ("on each criterion from 1 (worst) to 5 (best), with a one-sentence reason before each score.")
    ask = f"Rate the assistant in this conversation {whole}"
    if shown is not None:
        ask = ("Score each assistant turn shown (" + ", ".join(turn_key(k) for k in shown) + "; turn_k is "
               "[assistant k]) from 1 (worst) to 5 (best) on the criteria, with a short reason before each score. "
               f"Then rate the assistant over the whole conversation {whole}")
    task = f"\n\n# Task\n{instruction}" if instruction else ""
    user = f"{ask}\n\nCriteria:\n" + "\n".join(lines) + f"{task}\n\n# Conversation\n{transcript}\n"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def compare_transcripts_messages(instruction: str, first: str, second: str) -> list[dict[str, str]]:
    task = f"# Task\n{instruction}\n\n" if instruction else ""
    user = ("Which conversation shows the better assistant (helpful, correct, clear)? Give a one-sentence "
            f"reason, then A or B.\n\n{task}# Conversation A\n{first}\n\n# Conversation B\n{second}\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def rubric_messages(criteria: list, instruction: str, response: str) -> list[dict[str, str]]:
    lines = [f"- {c.name}: {c.description}" for c in criteria]
    user = ("Rate the response to the instruction on each criterion from 1 (worst) to 5 (best), with a "
            "one-sentence reason before each score.\n\nCriteria:\n" + "\n".join(lines) +
            f"\n\n# Instruction\n{instruction}\n\n# Response\n{response}\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def compare_messages(instruction: str, first: str, second: str) -> list[dict[str, str]]:
    user = ("Which response follows the instruction better (helpful, correct, clear)? Give a one-sentence "
            f"reason, then A or B.\n\n# Instruction\n{instruction}\n\n# Response A\n{first}\n\n"
            f"# Response B\n{second}\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def read_rubric(text: str, criteria: list) -> tuple[dict[str, Any], str | None]:
    """Scores and reasons from the judge's JSON: ({criterion: score, 'mean', 'reasons'}, error)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"judge JSON: {exc.msg} at char {exc.pos}"
    view: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for c in criteria:
        entry = data.get(c.name) if isinstance(data, dict) else None
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5:
            return {}, f"judge gave no 1-5 score for '{c.name}'"
        view[c.name] = float(score)
        reasons[c.name] = str(entry.get("reason", ""))
    view["mean"] = sum(view[c.name] for c in criteria) / len(criteria)
    view["reasons"] = reasons
    return view, None


def read_turns(text: str, turns: int, shown: tuple[int, ...]) -> tuple[dict[str, Any], str | None]:
    """Per-turn scores from the judge's JSON, one per assistant turn of the transcript (None for a
    turn elided from what the judge saw): ({turn_scores, turn_reasons, turn_min}, error)."""
    data = json.loads(text)  # read_rubric parsed it already
    given = data.get("turns") if isinstance(data, dict) else None
    scores: list[float | None] = [None] * turns
    reasons: list[str | None] = [None] * turns
    for k in shown:
        entry = given.get(turn_key(k)) if isinstance(given, dict) else None
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5:
            return {}, f"judge gave no 1-5 score for assistant turn {k}"
        scores[k - 1], reasons[k - 1] = float(score), str(entry.get("reason", ""))
    got = [s for s in scores if s is not None]
    return {"turn_scores": scores, "turn_reasons": reasons, "turn_min": min(got) if got else None}, None


def read_verdict(c: Any, text: str, extra: dict) -> tuple[dict[str, Any], str | None]:
    """A judge stage's view from its answer: the rubric (and per-turn scores), or the comparison
    (`extra`: which stage is A and B, and the compared texts)."""
    if c.criteria:
        view, err = read_rubric(text, c.criteria)
        if not err and "turns" in extra:
            more, err = read_turns(text, *extra["turns"])
            view = {**view, **more} if not err else {}
        return view, err
    better, reason, err = read_compare(text)
    view: dict[str, Any] = {"reason": reason}
    if better is not None:
        win, lose = extra[better], extra["B" if better == "A" else "A"]
        view.update({"winner": win, "chosen": extra["texts"][win], "rejected": extra["texts"][lose]})
    return view, err


def read_compare(text: str) -> tuple[str | None, str, str | None]:
    """('A' | 'B', reason, error)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, "", f"judge JSON: {exc.msg} at char {exc.pos}"
    better = data.get("better") if isinstance(data, dict) else None
    if better not in ("A", "B"):
        return None, "", "judge picked neither A nor B"
    return better, str(data.get("reason", "")), None
