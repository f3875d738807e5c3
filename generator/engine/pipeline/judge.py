"""Judge stages: the rubric prompt, its structured-output schema, and reading the verdict."""
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
