"""Deterministic checks for verify stages: answer agreement, JSON schema, regex, user functions.

Each check returns a `Verdict`; its fields become the stage's columns (`<stage>.passed`,
`<stage>.agree`, `<stage>.answer`, `<stage>.majority`, `<stage>.reason`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import importlib
import json
import multiprocessing
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_LABEL = re.compile(r"(?i)^(?:final answer|the answer is|answer)\s*[:=]?\s*")
_MARKERS = (re.compile(r"####\s*(.+)"), re.compile(r"\\boxed\{([^{}]*)\}"),
            re.compile(r"(?i)(?:final answer|the answer is|answer)\s*[:=]?\s*(.+)"))


@dataclass
class Verdict:
    passed: bool
    reason: str
    agree: int | None = None
    answer: str | None = None
    majority: str | None = None
    # `keep:` checks every sample apart (pipeline.samples): each one's verdict, the share that
    # passed, and the samples kept as rows
    verdicts: list[bool] | None = None
    pass_rate: float | None = None
    kept: list[int] | None = None
    reference: str | None = None  # check: reference: the reference's final answer (the ground truth)


def canonical_number(text: str) -> str | None:
    """'$1,000.50' -> '1000.5'; '18.0' -> '18'; None when there is no number."""
    m = _NUMBER.search(text)
    if not m:
        return None
    raw = m.group(0).replace("$", "").replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return str(int(value)) if value == int(value) else repr(round(value, 9))


def extract_answer(text: str | None, how: str) -> str | None:
    """The final answer of a solution: a number (after '####', a \\boxed{}, 'the answer is', else
    the last number in the text), the boxed content, the last non-empty line, the whole text, or
    (`answer`) the last <answer>...</answer> as written."""
    if not text or not text.strip():
        return None
    text = text.strip()
    if how == "text":
        return " ".join(text.split()).lower()
    if how == "last_line":
        return " ".join(text.splitlines()[-1].split()).lower() or None
    if how == "answer":  # reasoning-gym's convention, then a boxed answer, then the last line as written
        found = _ANSWER_TAG.findall(text) or _MARKERS[1].findall(text)
        last = _LABEL.sub("", text.splitlines()[-1].strip())  # "Final answer: 42" -> "42"
        return found[-1].strip() if found else last.strip() or None
    if how == "boxed":
        found = _MARKERS[1].findall(text)
        return found[-1].strip() if found else None
    for marker in _MARKERS:
        found = marker.findall(text)
        if found:
            value = canonical_number(found[-1])
            if value is not None:
                return value
    numbers = _NUMBER.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


def agreement(solution: str | None, resolves: list[str | None], how: str, min_agree: int) -> Verdict:
    answer = extract_answer(solution, how)
    others = [extract_answer(t, how) for t in resolves]
    found = [a for a in others if a is not None]  # the re-solves' vote (ties: the earliest)
    majority = collections.Counter(found).most_common(1)[0][0] if found else None
    if answer is None:
        return Verdict(False, "no final answer found in the solution", 0, None, majority)
    agree = sum(1 for a in others if a == answer)
    if agree >= min_agree:
        return Verdict(True, f"{agree} of {len(others)} re-solves agree", agree, answer, majority)
    return Verdict(False, f"only {agree} of {len(others)} re-solves agree (need {min_agree})", agree, answer,
                   majority)


def reference_check(text: str | None, reference: str | None, how: str) -> Verdict:
    """The solution's final answer equals the reference's (both taken by `how`)."""
    want = extract_answer(reference, how)
    if want is None:
        return Verdict(False, f"the reference has no final answer ({(reference or '')[:80]!r})")
    got = extract_answer(text, how)
    if got is None:
        return Verdict(False, "no final answer found in the solution", reference=want)
    if got == want:
        return Verdict(True, f"answer {got} matches the reference", answer=got, reference=want)
    return Verdict(False, f"answer {got} is not the reference's {want}", answer=got, reference=want)


def json_schema_check(text: str | None, schema: dict) -> Verdict:
    import jsonschema

    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as exc:
        return Verdict(False, f"not JSON: {exc.msg} at char {exc.pos}")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        return Verdict(False, f"schema: {where}: {errors[0].message}"[:300])
    return Verdict(True, "matches the schema")


REGEX_TIMEOUT = 5.0  # seconds one regex check may take: a catastrophic pattern fails, the run goes on


def regex_check(text: str | None, pattern: str, timeout: float = REGEX_TIMEOUT) -> Verdict:
    """`re` holds the interpreter while it backtracks, so a pattern like `(a+)+$` on a long answer
    would stall every thread; the `regex` engine (same syntax) stops after `timeout` seconds."""
    import regex

    try:
        found = regex.search(pattern, text or "", timeout=timeout)
    except TimeoutError:
        return Verdict(False, f"pattern {pattern!r} ran past its {timeout:g}s limit on a {len(text or '')}-character text")
    if found:
        return Verdict(True, "pattern found")
    return Verdict(False, f"pattern {pattern!r} not found")


def every_turn(turns: list[str], check, last: bool = False) -> Verdict:
    """A check of a conversation's assistant turns, every one of which must pass (`last`: the one
    turn given is the conversation's last); the first that fails is the verdict, naming the turn."""
    for k, text in enumerate(turns, start=1):
        v = check(text)
        which = "the last assistant turn" if last else f"assistant turn {k} of {len(turns)}"
        if not v.passed or last:
            return Verdict(v.passed, f"{which}: {v.reason}"[:300])
    return Verdict(True, f"all {len(turns)} assistant turns pass")


# ---------------------------------------------------------------- user functions

def _call(paths: list[str], ref: str, row: dict) -> tuple[bool, str]:
    """Runs in the worker process: import `module:function` from the project and call it."""
    for p in paths:
        if p not in sys.path:
            sys.path.insert(0, p)
    module, _, name = ref.partition(":")
    fn = getattr(importlib.import_module(module), name)
    out = fn(row)
    if isinstance(out, tuple):
        passed, reason = (bool(out[0]), str(out[1]) if len(out) > 1 else "")
    else:
        passed, reason = bool(out), ""
    return passed, reason


def _ready() -> bool:
    return True


def project_paths(base_dir: Path | None) -> list[str]:
    """Where a project's `module:function` is imported from: the spec's folder (and its parent
    when the spec lives in a `specs/` folder)."""
    if base_dir is None:
        return [str(Path.cwd())]
    paths = [str(base_dir.resolve())]
    if base_dir.name == "specs":
        paths.append(str(base_dir.resolve().parent))
    return paths


def check_importable(ref: str, base_dir: Path | None) -> str | None:
    """An error message when `module:function` cannot be found (checked at validate time, without
    importing it: the module only runs in the worker)."""
    module, _, name = ref.partition(":")
    rel = Path(*module.split("."))
    for root in project_paths(base_dir):
        for cand in (Path(root) / rel.with_suffix(".py"), Path(root) / rel / "__init__.py"):
            if cand.is_file():
                if not re.search(rf"^(async\s+)?def\s+{re.escape(name)}\b|^{re.escape(name)}\s*=", cand.read_text(),
                                 re.M):
                    return f"{cand} defines no function '{name}'"
                return None
    return f"no module '{module}' beside the spec ({', '.join(project_paths(base_dir))})"


class FunctionRunner:
    """Calls user checks in one worker process (spawned, so the engine's threads and GPU state are
    not forked); a call that runs past its timeout fails the check and the worker is replaced."""

    START_TIMEOUT = 120.0  # starting the worker (a fresh interpreter) is not the user's time

    def __init__(self, base_dir: Path | None):
        self.paths = project_paths(base_dir)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._one = threading.Lock()  # one call at a time: a call's timeout starts when it starts

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            self._pool.submit(_ready).result(timeout=self.START_TIMEOUT)  # the worker is up before any timing
        return self._pool

    def __call__(self, ref: str, row: dict, timeout: float) -> Verdict:
        with self._one:
            return self._call(ref, row, timeout)

    def _call(self, ref: str, row: dict, timeout: float) -> Verdict:
        try:
            fut = self._executor().submit(_call, self.paths, ref, row)
        except concurrent.futures.TimeoutError:
            self._kill()
            return Verdict(False, f"{ref}: the check worker did not start in {self.START_TIMEOUT:g}s")
        try:
            passed, reason = fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._kill()
            return Verdict(False, f"{ref} ran past its {timeout:g}s timeout")
        except concurrent.futures.process.BrokenProcessPool:
            self._kill()
            return Verdict(False, f"{ref}: the worker process died")
        except Exception as exc:  # the user's code raised: a failed check with its message
            return Verdict(False, f"{ref} raised {type(exc).__name__}: {exc}"[:300])
        return Verdict(passed, reason or ("passed" if passed else "failed"))

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()  # a stuck user function never returns: stop its process
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def to_jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
