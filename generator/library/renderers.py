"""Renderers: turn a template's structured (JSON) answer into plain training text.

A template that asks for structured output names a renderer in its front matter
(``renderer: textbook_mcq``). After generation the JSON answer goes through that renderer,
which picks a surface form (lead-ins, option markers, speaker labels) with a
``random.Random`` seeded per record, so the same record always renders the same way while
the corpus as a whole does not repeat one fixed layout.

    >>> render("sft_pair", {"instruction": "Say hi.", "response": "Hi!"}, seed=3)  # doctest: +SKIP

A renderer is a function ``(data, rng) -> str``; add one with ``@register("name")``. It raises
``ValueError`` when the data does not have the shape it needs.
"""
from __future__ import annotations

import random
import re
from typing import Any, Callable

Renderer = Callable[[dict, random.Random], str]

RENDERERS: dict[str, Renderer] = {}


def register(name: str) -> Callable[[Renderer], Renderer]:
    """Decorator: add a renderer to the registry under `name`."""

    def deco(fn: Renderer) -> Renderer:
        if name in RENDERERS:
            raise ValueError(f"renderer '{name}' is already registered")
        RENDERERS[name] = fn
        return fn

    return deco


def render(name: str, data: dict, seed: int) -> str:
    """Render `data` with the renderer `name`; the same seed gives the same text."""
    try:
        fn = RENDERERS[name]
    except KeyError:
        raise KeyError(f"unknown renderer '{name}'; known renderers: "
                       f"{', '.join(sorted(RENDERERS)) or '(none)'}") from None
    if not isinstance(data, dict):
        raise ValueError(f"renderer '{name}' needs a JSON object, got {type(data).__name__}")
    return fn(data, random.Random(seed)).strip() + "\n"


# --------------------------------------------------------------------------- helpers

def _text(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field '{key}' must be a non-empty string")
    return value.strip()


def _roman(n: int, upper: bool) -> str:
    vals = [(10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")]
    out = ""
    for v, s in vals:
        while n >= v:
            out += s
            n -= v
    return out.upper() if upper else out


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).rstrip(".")


# A marker a model may put in front of an option despite being asked not to: "A) ", "(b) ", "3. ".
_MARKER_RE = re.compile(r"^\s*(?:\(?[A-Da-d1-4]\)|[A-Da-d1-4][.:])\s+")


def _strip_markers(options: list[str]) -> list[str]:
    if all(_MARKER_RE.match(o) for o in options):
        return [_MARKER_RE.sub("", o, count=1) for o in options]
    return options


def _correct_index(options: list[str], label: str) -> int | None:
    """Index of the option the answer label names: its text, or a bare letter or number."""
    for text in (label, _MARKER_RE.sub("", label, count=1)):
        hit = next((i for i, o in enumerate(options) if _norm(o) == _norm(text)), None)
        if hit is not None:
            return hit
    bare = label.strip().strip("().:").upper()
    if len(bare) == 1 and bare in "ABCD1234":
        i = "ABCD".find(bare) if bare.isalpha() else int(bare) - 1
        return i if 0 <= i < len(options) else None
    return None


# Option enumerations: a function from the 0-based index to the marker ("" = no marker).
OPTION_MARKERS: list[tuple[str, Callable[[int], str]]] = [
    ("1.", lambda i: f"{i + 1}."),
    ("A.", lambda i: f"{chr(65 + i)}."),
    ("i.", lambda i: f"{_roman(i + 1, False)}."),
    ("(1)", lambda i: f"({i + 1})"),
    ("1)", lambda i: f"{i + 1})"),
    ("I.", lambda i: f"{_roman(i + 1, True)}."),
    ("*", lambda i: "*"),
    ("none", lambda i: ""),
]
QUESTION_LEADS = ["Can you answer this?", "Try to solve this:", "Here is a question for you:",
                  "Test your knowledge:", "Challenge:", "Q:", ""]
ANSWER_LEADS = ["Key:", "A:", "Answer:", "The answer is:", "Selected answer:",
                "The correct choice is:"]
EXPLANATION_LEADS = ["Explanation:", "Why:", "Reasoning:", "Step by step:", ""]


@register("textbook_mcq")
def textbook_mcq(data: dict, rng: random.Random) -> str:
    """Passages, then one multiple-choice question with a varied surface form."""
    where = "textbook_mcq"
    passages = data.get("passages")
    if not isinstance(passages, list) or not passages:
        raise ValueError(f"{where}: 'passages' must be a non-empty list")
    texts = []
    for i, p in enumerate(passages):
        if isinstance(p, str) and p.strip():
            texts.append(p.strip())
        elif isinstance(p, dict):
            texts.append(_text(p, "passage", f"{where}: passages[{i}]"))
        else:
            raise ValueError(f"{where}: passages[{i}] must be an object with a 'passage' string")
    mcq = data.get("multiple_choice_question")
    if not isinstance(mcq, dict):
        raise ValueError(f"{where}: 'multiple_choice_question' must be an object")
    question = _text(mcq, "question", f"{where}: multiple_choice_question")
    options = mcq.get("options")
    if (not isinstance(options, list) or len(options) < 2
            or not all(isinstance(o, str) and o.strip() for o in options)):
        raise ValueError(f"{where}: 'options' must be a list of at least 2 non-empty strings")
    options = _strip_markers([o.strip() for o in options])
    label = _text(mcq, "answer_label", f"{where}: multiple_choice_question")
    explanation = mcq.get("step_by_step_answer_explanation", "")
    if not isinstance(explanation, str):
        raise ValueError(f"{where}: 'step_by_step_answer_explanation' must be a string")
    # The answer label should be the exact text of an option; accept small differences in
    # case, spacing, a final full stop or a stray marker, and fall back to the label itself.
    correct = _correct_index(options, label)

    lead = rng.choice(QUESTION_LEADS)
    _, marker = rng.choice(OPTION_MARKERS)
    answer_lead = rng.choice(ANSWER_LEADS)
    expl_lead = rng.choice(EXPLANATION_LEADS)

    if not lead:
        head = question
    elif rng.random() < 0.5:
        head = f"{lead} {question}"
    else:
        head = f"{lead}\n{question}"
    lines = [head]
    for i, option in enumerate(options):
        m = marker(i)
        lines.append(f"{m} {option}" if m else option)
    block = "\n".join(lines)
    if correct is not None:
        m = marker(correct)
        answer_text = f"{m} {options[correct]}" if m and m != "*" else options[correct]
    else:
        answer_text = label
    answer = f"{answer_lead} {answer_text}"
    parts = ["\n\n".join(texts), block, answer]
    if explanation.strip():
        parts.append(f"{expl_lead} {explanation.strip()}".strip() if expl_lead
                     else explanation.strip())
    return "\n\n".join(parts)


# Speaker-label layouts for instruction data: (user label, assistant label, separator).
PAIR_LAYOUTS: list[tuple[str, str, str]] = [
    ("User:", "Assistant:", "\n"),
    ("Q:", "A:", "\n"),
    ("### Instruction:", "### Response:", "\n\n"),
    ("Question:", "Answer:", "\n"),
    ("Human:", "Assistant:", "\n\n"),
    ("Instruction:", "Output:", "\n"),
]
CHAT_LAYOUTS: list[tuple[str, str]] = [
    ("User:", "Assistant:"),
    ("Human:", "Assistant:"),
    ("Student:", "Tutor:"),
    ("### User", "### Assistant"),
    ("Q:", "A:"),
]


def _labelled(label: str, text: str) -> str:
    # Markdown-heading labels get their own line; short labels share the line.
    return f"{label}\n{text}" if label.startswith("#") else f"{label} {text}"


@register("sft_pair")
def sft_pair(data: dict, rng: random.Random) -> str:
    """One instruction and its response, in one of a few plain-text layouts."""
    instruction = _text(data, "instruction", "sft_pair")
    response = _text(data, "response", "sft_pair")
    user, assistant, sep = rng.choice(PAIR_LAYOUTS)
    return f"{_labelled(user, instruction)}{sep}{_labelled(assistant, response)}"


def _turns(data: dict, where: str, first: str, second: str) -> list[tuple[str, str]]:
    """The `turns` list as (first, second) text pairs, e.g. ('user', 'assistant')."""
    turns: Any = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'turns' must be a non-empty list of {{{first}, {second}}}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: turns[{i}] must be an object with '{first}' and '{second}'")
        out.append((_text(turn, first, f"{where}: turns[{i}]"), _text(turn, second, f"{where}: turns[{i}]")))
    return out


@register("sft_chat")
def sft_chat(data: dict, rng: random.Random) -> str:
    """A multi-turn conversation, in one of a few plain-text layouts."""
    turns = _turns(data, "sft_chat", "user", "assistant")
    user, assistant = rng.choice(CHAT_LAYOUTS)
    sep = rng.choice(["\n", "\n\n"])
    return sep.join(line for u, a in turns for line in (_labelled(user, u), _labelled(assistant, a)))


# --------------------------------------------------------------------------- math

# A step marker a model may write inside a step despite the list: "Step 2:", "2.", "(2)", "2)".
_STEP_RE = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]|\(?\d+\)|\d+[.:](?!\d))\s*", re.IGNORECASE)
STEP_MARKERS: list[tuple[str, Callable[[int], str]]] = [
    ("Step 1:", lambda i: f"Step {i + 1}:"),
    ("1.", lambda i: f"{i + 1}."),
    ("1)", lambda i: f"{i + 1})"),
    ("-", lambda i: "-"),
    ("none", lambda i: ""),
]
PROBLEM_LEADS = ["Problem:", "Question:", "Q:", "Exercise:", ""]
SOLUTION_LEADS = ["Solution:", "Step by step:", "Let's solve it.", "Working:", "A:", ""]
# "{}" is the answer without a final full stop.
FINAL_ANSWERS = ["Answer: {}", "The answer is {}.", "#### {}", "Final answer: {}", "So the answer is {}."]


def _steps(data: dict, key: str, where: str) -> list[str]:
    steps = data.get(key)
    if (not isinstance(steps, list) or not steps
            or not all(isinstance(s, str) and s.strip() for s in steps)):
        raise ValueError(f"{where}: '{key}' must be a non-empty list of non-empty strings")
    out = [_STEP_RE.sub("", s.strip(), count=1).strip() for s in steps]
    return [s for s in out if s] or [s.strip() for s in steps]


def _step_block(steps: list[str], rng: random.Random) -> str:
    _, marker = rng.choice(STEP_MARKERS)
    return "\n".join(f"{marker(i)} {s}" if marker(i) else s for i, s in enumerate(steps))


def _led(lead: str, text: str) -> str:
    return f"{lead} {text}" if lead else text


def _final(answer: str, rng: random.Random) -> str:
    return rng.choice(FINAL_ANSWERS).format(answer.rstrip(". "))


def _sections(data: dict, rng: random.Random, where: str, parts: list[tuple[str, str, list[str]]]) -> str:
    """Render `parts` in order, blank lines apart. A part is (field, kind, lead-ins): kind "text"
    puts a drawn lead-in before the field's text, "steps" heads the numbered steps with one (none
    for ""), "final" writes the final-answer line."""
    out = []
    for key, kind, leads in parts:
        if kind == "steps":
            block = _step_block(_steps(data, key, where), rng)
            lead = rng.choice(leads)
            out.append(f"{lead}\n{block}" if lead else block)
        elif kind == "final":
            out.append(_final(_text(data, key, where), rng))
        else:
            out.append(_led(rng.choice(leads), _text(data, key, where)))
    return "\n\n".join(out)


@register("math_solution")
def math_solution(data: dict, rng: random.Random) -> str:
    """A problem, its solution steps and the final answer, in a varied layout."""
    return _sections(data, rng, "math_solution", [("problem", "text", PROBLEM_LEADS),
                                                   ("steps", "steps", SOLUTION_LEADS), ("answer", "final", [])])


MISTAKE_LEADS = ["Wrong solution:", "A common mistake:", "A student wrote:", "Incorrect attempt:"]
WHY_WRONG_LEADS = ["Why it is wrong:", "The mistake:", "What went wrong:", "Where it fails:"]
CORRECT_LEADS = ["Correct solution:", "The right way:", "Corrected solution:", "Solution:"]


@register("math_mistake")
def math_mistake(data: dict, rng: random.Random) -> str:
    """A problem, a typical wrong solution, why it is wrong, then the correct steps and answer."""
    return _sections(data, rng, "math_mistake", [
        ("problem", "text", PROBLEM_LEADS), ("wrong_solution", "text", MISTAKE_LEADS),
        ("why_wrong", "text", WHY_WRONG_LEADS), ("steps", "steps", CORRECT_LEADS), ("answer", "final", [])])


# Speaker labels of a tutoring dialogue: (tutor, student).
DIALOGUE_LABELS: list[tuple[str, str]] = [
    ("Tutor:", "Student:"), ("Teacher:", "Student:"), ("T:", "S:"), ("Tutor:", "Learner:"),
    ("Coach:", "Me:"),
]


@register("math_dialogue")
def math_dialogue(data: dict, rng: random.Random) -> str:
    """A tutoring dialogue: the tutor's problem, student and tutor turns, then the answer."""
    where = "math_dialogue"
    problem = _text(data, "problem", where)
    answer = _text(data, "answer", where)
    turns = _turns(data, where, "student", "tutor")
    tutor, student = rng.choice(DIALOGUE_LABELS)
    lines = [f"{tutor} {problem}"]
    for said, replied in turns:
        lines += [f"{student} {said}", f"{tutor} {replied}"]
    sep = rng.choice(["\n", "\n\n"])
    return sep.join(lines) + "\n\n" + _final(answer, rng)


FACT_LEADS = ["Fact:", "Claim:", "Key idea:", "Theorem:", ""]
WHY_LEADS = ["Why:", "Proof:", "Explanation:", "Here is why:", "Reasoning:"]
EXAMPLE_LEADS = ["Example:", "Check with numbers:", "For example:", "Worked example:"]


@register("math_explanation")
def math_explanation(data: dict, rng: random.Random) -> str:
    """A fact, the steps of its proof or explanation, and an example with numbers."""
    return _sections(data, rng, "math_explanation", [("fact", "text", FACT_LEADS), ("steps", "steps", WHY_LEADS),
                                                      ("example", "text", EXAMPLE_LEADS)])
