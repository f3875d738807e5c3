"""Which rows of a run go into an export, how they split, and the columns of each layout."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import yaml

from generator.core.errors import SynthgenError
from generator.export.masks import user_side, with_train

LAYOUTS = ("text", "messages", "preference", "rl")
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|!=|>|<|=)\s*(.+?)\s*$")


class ExportError(SynthgenError):
    """An export option that does not fit the run (unknown column, empty selection, ...)."""


@dataclass
class Filters:
    status: tuple[str, ...] = ("ok",)
    templates: tuple[str, ...] = ()
    rounds: tuple[int, ...] = ()
    where: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        out = [f"status in {list(self.status)}"] if self.status else []
        if self.templates:
            out.append(f"template in {list(self.templates)}")
        if self.rounds:
            out.append(f"round in {list(self.rounds)}")
        out += list(self.where)
        return out


@dataclass
class Preference:
    """Columns of rows that carry two responses and a judge's choice between them."""

    prompt: str = "prompt"
    response_a: str = "response_a"
    response_b: str = "response_b"
    choice: str = "choice"  # names the better response; other values (ties, blanks) leave the row out
    a_values: tuple[str, ...] = ("a", "A", "1", "response_a")
    b_values: tuple[str, ...] = ("b", "B", "2", "response_b")


@dataclass
class Selection:
    frame: pl.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out


def parse_where(expr: str) -> pl.Expr:
    """`column>=value` (also <=, >, <, ==, =, !=); the value is a YAML scalar (4, 0.5, true, text)."""
    m = _WHERE.match(expr)
    if not m:
        raise ExportError(f"--where '{expr}': not COLUMN OP VALUE; write e.g. --where 'judge_score>=4' "
                          f"(OP is one of >=, <=, >, <, ==, !=)")
    col, op, raw = m.groups()
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError:  # not a YAML scalar (e.g. an unclosed quote): compare as the text typed
        value = raw
    if isinstance(value, (dict, list)) or value is None:
        value = raw
    c = pl.col(col)
    return {">=": c >= value, "<=": c <= value, ">": c > value, "<": c < value, "==": c == value,
            "=": c == value, "!=": c != value}[op]


def select(frame: pl.DataFrame, filters: Filters) -> Selection:
    """The rows every filter keeps, with how many each filter left out."""
    dropped: dict[str, int] = {}

    def apply(label: str, expr: pl.Expr, columns: list[str], option: str) -> None:
        nonlocal frame
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ExportError(f"{option}: the run has no column '{missing[0]}'; columns: "
                              f"{', '.join(sorted(frame.columns))}")
        try:
            kept = frame.filter(expr)
        except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError,
                pl.exceptions.SchemaError) as exc:
            raise ExportError(f"{option}: cannot compare ({str(exc).splitlines()[0]}); check the value's type") from None
        dropped[label] = frame.height - kept.height
        frame = kept

    if filters.status:
        apply(f"status in {list(filters.status)}", pl.col("status").is_in(list(filters.status)), ["status"],
              "--status")
    if filters.templates:
        apply(f"template in {list(filters.templates)}", pl.col("template").is_in(list(filters.templates)),
              ["template"], "--template")
    if filters.rounds:
        apply(f"round in {list(filters.rounds)}", pl.col("round").is_in(list(filters.rounds)), ["round"], "--round")
    for w in filters.where:
        expr = parse_where(w)
        apply(w, expr, [_WHERE.match(w).group(1)], f"--where '{w}'")
    return Selection(frame=frame, dropped=dropped)


def _key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def split(frame: pl.DataFrame, test_ratio: float, seed: int, by: str = "topic_id") -> pl.Series:
    """A `split` column (train/test): seeded, stratified by `by` (each topic keeps about the ratio).

    Each group's share of the test total is its exact quota rounded down; the rows still owed go to
    the groups with the largest remainders (ties by a seeded hash), so the test total is
    round(N x ratio) and the same seed and ids always give the same split, whatever the row order."""
    n = frame.height
    if n == 0 or test_ratio <= 0:
        return pl.Series("split", ["train"] * n)
    strat = frame[by].cast(pl.Utf8).fill_null("") if by in frame.columns else pl.Series([""] * n)
    groups: dict[str, list[tuple[str, int]]] = {}
    for i, (g, rid) in enumerate(zip(strat.to_list(), frame["id"].to_list())):
        groups.setdefault(g, []).append((_key(seed, str(rid)), i))
    total = round(n * test_ratio)
    quota = {g: len(rows) * test_ratio for g, rows in groups.items()}
    take = {g: int(q) for g, q in quota.items()}
    owed = total - sum(take.values())
    order = sorted(groups, key=lambda g: (-(quota[g] - take[g]), _key(seed, "group:" + g)))
    for g in order[:max(owed, 0)]:
        take[g] += 1
    labels = ["train"] * n
    for g, rows in groups.items():
        for _, i in sorted(rows)[:take[g]]:
            labels[i] = "test"
    return pl.Series("split", labels)


def layout_frame(frame: pl.DataFrame, layout: str, pref: Preference | None = None,
                 side: str = "assistant", reasoning: str = "field") -> tuple[pl.DataFrame, int]:
    """The exported columns for `layout`, and how many rows the layout itself left out
    (`reasoning`: how the messages layout carries a thinking model's trace, REASONING_MODES)."""
    if reasoning not in REASONING_MODES:
        raise ExportError(f"--reasoning {reasoning}: unknown; choose from {', '.join(REASONING_MODES)}")
    meta = [c for c in ("id", "topic", "template", "model") if c in frame.columns]
    if layout == "text":
        return frame.select(["text", *meta]), 0
    if layout == "messages":
        return _messages(frame, meta, side, reasoning)
    if layout == "preference":
        return _preference(frame, pref or Preference(), meta)
    raise ExportError(f"--layout {layout}: unknown; choose from {', '.join(LAYOUTS)}")


# columns written as lists of JSON values (Parquet's JSON type; `datasets` loads each as a dict)
JSON_COLUMNS = ("messages", "tools")


REASONING_MODES = ("field", "inline", "drop")
THINK = ("<think>", "</think>")


def assistant_turn(text: str, reasoning: str | None, mode: str) -> dict[str, Any]:
    if not reasoning or mode == "drop":
        return {"role": "assistant", "content": text}
    if mode == "inline":
        return {"role": "assistant", "content": f"{THINK[0]}\n{reasoning}\n{THINK[1]}\n\n{text}"}
    return {"role": "assistant", "content": text, "reasoning_content": reasoning}


def chat_message(m: dict) -> dict:
    """One OpenAI-style message in the form chat templates read: content always a string, tool-call
    arguments as objects (the OpenAI API sends them as JSON text)."""
    out = dict(m)
    out["content"] = m.get("content") or ""
    if m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            fn = dict(c.get("function") or {})
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except ValueError:
                    pass  # kept as written: the model's own malformed text
            calls.append({**c, "function": fn})
        out["tool_calls"] = calls
    return out


def _messages(frame: pl.DataFrame, meta: list[str], side: str, reasoning: str) -> tuple[pl.DataFrame, int]:
    """Rows as OpenAI messages, each with its `train` flag: a conversation or agent trajectory
    (`conversation`, with the offered `tools`), or a single-turn row's prompt and its generation
    (with its reasoning as `reasoning` says). `side="user"` gives conversations from the user
    simulator's side; other rows are left out."""
    msgs_out, tools_out, keep = [], [], []
    has_conv, has_tools, has_sim = ("conversation" in frame.columns, "tools" in frame.columns,
                                    "simulator" in frame.columns)
    for row in frame.iter_rows(named=True):
        conv = json.loads(row["conversation"]) if has_conv and row.get("conversation") else None
        if side == "user":
            sim = json.loads(row["simulator"]) if has_sim and row.get("simulator") else None
            if conv is None or sim is None:
                keep.append(False)
                continue
            msgs = user_side(conv, sim.get("prompt"), sim.get("closing"))
            tools = None
        else:
            msgs = conv if conv is not None else (
                list(row.get("messages") or []) + [assistant_turn(row.get("text") or "", row.get("reasoning"), reasoning)])
            tools = json.loads(row["tools"]) if has_tools and row.get("tools") else None
        keep.append(True)
        msgs_out.append([json.dumps(chat_message(m), ensure_ascii=False) for m in with_train(msgs)])
        tools_out.append([json.dumps(t, ensure_ascii=False) for t in tools] if tools else None)
    kept = frame.filter(pl.Series(keep, dtype=pl.Boolean)) if keep else frame
    out = pl.DataFrame({"messages": msgs_out, "tools": tools_out},
                       schema={"messages": pl.List(pl.String), "tools": pl.List(pl.String)}).hstack(kept.select(meta))
    return out, frame.height - out.height


def _preference(frame: pl.DataFrame, p: Preference, meta: list[str]) -> tuple[pl.DataFrame, int]:
    need = {"--prompt-column": p.prompt, "--response-a-column": p.response_a,
            "--response-b-column": p.response_b, "--choice-column": p.choice}
    for opt, col in need.items():
        if col not in frame.columns:
            raise ExportError(f"{opt} {col}: the run has no such column (the preference layout needs rows "
                              f"with two responses and a judge's choice); columns: {', '.join(sorted(frame.columns))}")
    choice = pl.col(p.choice).cast(pl.Utf8).str.strip_chars()
    is_a, is_b = choice.is_in(list(p.a_values)), choice.is_in(list(p.b_values))
    out = frame.filter(is_a | is_b).select(
        pl.col(p.prompt).cast(pl.Utf8).alias("prompt"),
        pl.when(is_a).then(pl.col(p.response_a)).otherwise(pl.col(p.response_b)).cast(pl.Utf8).alias("chosen"),
        pl.when(is_a).then(pl.col(p.response_b)).otherwise(pl.col(p.response_a)).cast(pl.Utf8).alias("rejected"),
        *[c for c in meta if c not in ("prompt",)],
    )
    return out, frame.height - out.height


# layout -> (what a row is, Hub task categories, tags), for validation and the dataset card
LAYOUT_ABOUT = {
    "text": ("Pre-training text: one `text` column (the training text of each generation) with `id`, "
             "`topic`, `template` and `model` for lineage.", ["text-generation"], ["pretraining"]),
    "messages": ("Chat SFT: `messages`, a list of {role, content, train}: the prompt the generator saw "
                 "(system and user turns) followed by the generation as the assistant turn (for "
                 "conversation and agent stages: the whole conversation, with assistant `tool_calls` and "
                 "`tool` messages, and the offered `tools`, both as `tokenizer.apply_chat_template(messages, "
                 "tools=tools)` takes them; a thinking model's reasoning as the assistant turn's "
                 "`reasoning_content`, or inline in `<think>` tags); `train` marks the messages to train on "
                 "(see Training masks); `id`, `topic`, `template` and `model` for lineage.",
                 ["text-generation"], ["sft", "conversational"]),
    "preference": ("Preference pairs: `prompt`, `chosen` and `rejected` (strings), from rows that carry "
                   "two responses and a judge's choice; `id`, `topic`, `template` and `model` for lineage.",
                   ["text-generation"], ["preference", "dpo"]),
    "rl": ("Reinforcement learning on verifiable problems, one row per problem: `prompt` (chat messages), "
           "`reward_model` ({ground_truth, style}: the reference answer a rule-based reward compares with), "
           "`data_source`, `verifier` (how the generator checked answers) and `pass_rate` (the share of its own "
           "samples that passed); `id`, `topic`, `template` and `model` for lineage.",
           ["text-generation"], ["rl", "verifiable"]),
}
