"""Reasoning kept apart from the answer (control flow, on the scripted backend and the scripted
server): thinking blocks, cut reasoning, reasoning that never ends, markers inside a JSON answer,
`reasoning_content` from a server, the thinking budget, the columns and statuses they end in, the
usage ledger's reasoning tokens, and the request cache replaying all of it."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.errors import SpecError
from generator.core.reasoning import PARSERS, Markers, split
from generator.engine.executors.local import LocalExecutor
from generator.export.usage import compute_usage
from generator.testing.fake import FakeBackend
from openai_server import OpenAIServer

THINK = PARSERS["qwen3"]


def test_split_at_the_first_end_marker_only():
    assert split("<think>a b</think>\n\nanswer", THINK) == split("  <think>a b</think>answer", THINK)
    s = split("<think>a b</think>answer", THINK)
    assert (s.reasoning, s.text, s.ended) == ("a b", "answer", True)
    s = split('<think>plan</think>{"q": "<think>x</think>"}', THINK)  # markers inside the JSON answer
    assert s.reasoning == "plan" and json.loads(s.text) == {"q": "<think>x</think>"}
    s = split("<think>still going", THINK)
    assert (s.reasoning, s.text, s.ended) == ("still going", "", False)
    assert split("no thinking </think> here", THINK).reasoning is None  # qwen3: the model opens the block
    opened = PARSERS["deepseek_r1"]  # the template opens it: the completion starts inside
    assert split("a b</think>answer", opened).reasoning == "a b"
    assert split("never ends", opened) == split("never ends", Markers(opened=True))
    assert split("never ends", opened).text == ""


TEMPLATES = {
    "gen.j2": "Write one short problem about {{ subtopic }}.\n",
    "solve.j2": "Solve and end with 'Final answer: N'.\n\n{{ problem.text }}\n",
    "explain.j2": "Explain this reasoning: {{ solve.reasoning }}\n",
}
SPEC = """name: r
seed: 5
topics:
  - items: [Fractions, Decimals]
generations_per_topic: 2
models:
  - {{name: m1, reasoning: {reasoning}}}
sampling: {{max_tokens: 64}}
run: {{retries: 0}}
stages:
  - {{name: problem, kind: generate, template: gen}}
  - {{name: solve, kind: generate, template: solve, output: true{solve}}}
  - {{name: explain, kind: generate, template: explain}}
  - name: quality
    kind: judge
    target: solve
    criteria:
      - {{name: correct, description: right answer}}
"""
RUBRIC = json.dumps({"correct": {"reason": "fine", "score": 4}})


def project(tmp_path: Path, reasoning: str = "qwen3", solve: str = "") -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.format(reasoning=reasoning, solve=solve))
    return p


def run_fake(spec: Path, out: Path, solve_answer: str):
    made = []

    def respond(r):
        text = r.messages[-1]["content"]
        if r.json_schema is not None:
            return f"<think>weighing the answer</think>{RUBRIC}"
        if text.startswith("Solve"):
            return solve_answer
        return f"<think>a plan</think>Problem about {text[31:40]}"

    def factory(cfg, **_):
        made.append(FakeBackend(model=cfg.name, responder=respond))
        return made[-1]

    res = run(load_spec(spec), out=out, executor=LocalExecutor(backend_factory=factory), score=False)
    return res, [c for b in made for c in b.calls]


def test_thinking_blocks_are_their_own_columns_and_later_stages_see_the_answer(tmp_path):
    res, calls = run_fake(project(tmp_path), tmp_path / "run", "<think>add the parts carefully</think>Final answer: 4")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert df.height == 4 and (df["status"] == "ok").all()
    assert (df["solve.text"] == "Final answer: 4").all() and (df["text"] == "Final answer: 4").all()
    assert (df["solve.reasoning"] == "add the parts carefully").all() and (df["solve.reasoning_tokens"] == 4).all()
    assert (df["reasoning"] == "add the parts carefully").all()  # the output stage's, for export
    assert (df["problem.reasoning"] == "a plan").all() and (df["quality.reasoning"] == "weighing the answer").all()
    assert (df["quality.correct"] == 4).all()  # the judge's rubric is read from its answer, not its thinking
    assert (df["solve.reasoning_forced"] == False).all()  # noqa: E712
    # the judge and the next solve see the answer only; a template that names the reasoning gets it
    judged = [c for c in calls if "/quality/" in c.id]
    assert judged and all("add the parts" not in m["content"] for c in judged for m in c.messages)
    solves = [c for c in calls if "/solve/" in c.id]
    assert all("a plan" not in c.messages[-1]["content"] and "Problem about" in c.messages[-1]["content"]
               for c in solves)
    explains = [c for c in calls if "/explain/" in c.id]
    assert all("add the parts carefully" in c.messages[-1]["content"] for c in explains)
    assert all(c.reasoning == THINK for c in calls)  # every request to the model carries its markers
    # the ledger counts reasoning tokens apart (a part of completion tokens)
    usage = compute_usage(tmp_path / "run")
    by_stage = {r["stage"]: r for r in usage["by"]["stage"]}
    assert by_stage["solve"]["reasoning_tokens"] == 4 * 4 and by_stage["problem"]["reasoning_tokens"] == 4 * 2
    assert usage["total"]["reasoning_tokens"] == 4 * (2 + 4 + 2 + 3)  # problem, solve, explain, quality
    assert usage["total"]["reasoning_tokens"] < usage["total"]["completion_tokens"]
    # the request cache keeps the reasoning: a second run into the same folder replays every answer
    again, calls2 = run_fake(project(tmp_path), tmp_path / "run", "<think>something else</think>Final answer: 9")
    assert calls2 == [] and again.model_calls == 0
    redo = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert redo["solve.reasoning"].to_list() == df["solve.reasoning"].to_list()


@pytest.mark.parametrize("answer,status,why", [
    ("<think>cut in the middle of<truncated>", "no_answer", "cut by max_tokens"),
    ("<think>thinking and then the model stopped", "no_answer", "never ended"),
])
def test_reasoning_without_an_answer_has_no_answer(tmp_path, answer, status, why):
    run_fake(project(tmp_path), tmp_path / "run", answer)
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert (df["solve.status"] == status).all() and (df["status"] == status).all()
    assert (df["solve.text"] == "").all() and (df["text"] == "").all()
    assert df["solve.reasoning"][0].startswith(answer[7:21])
    assert why in df["reason"][0] and df["decided_by"][0] == "solve"
    assert df["quality.status"].is_null().all()  # nothing was judged


def test_a_thinking_budget_forces_the_end_and_the_answer_follows(tmp_path):
    spec = project(tmp_path, solve=", max_reasoning_tokens: 3")
    run_fake(spec, tmp_path / "run", "<think>one two three four five six</think>Final answer: 4")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert (df["solve.reasoning_forced"] == True).all() and (df["solve.reasoning"] == "one two three").all()  # noqa: E712
    assert (df["solve.reasoning_tokens"] == 3).all() and (df["solve.text"] == "Final answer: 4").all()
    assert (df["problem.reasoning_forced"] == False).all()  # noqa: E712 - the budget is the stage's
    # reasoning that never ends is cut at the budget too, and an answer still follows
    (tmp_path / "b").mkdir()
    never = project(tmp_path / "b", solve=", max_reasoning_tokens: 2")
    run_fake(never, tmp_path / "run2", "<think>on and on and on")
    df = pl.read_parquet(tmp_path / "run2" / "generations" / "*.parquet")
    assert (df["solve.status"] == "ok").all() and (df["solve.reasoning"] == "on and").all()
    assert df["solve.text"][0].startswith("Answer ")


def test_a_budget_needs_an_offline_model_with_markers(tmp_path):
    spec = project(tmp_path, solve=", max_reasoning_tokens: 3")
    spec.write_text(spec.read_text().replace("{name: m1, reasoning: qwen3}", "{name: m1}"))
    with pytest.raises(SpecError, match="thinking budget.*no `reasoning:` markers"):
        run(load_spec(spec), out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(c.name)),
            score=False)


def test_unknown_reasoning_parser_is_one_line(tmp_path):
    with pytest.raises(SpecError, match="unknown reasoning parser 'r1'; use one of deepseek_r1, qwen3"):
        load_spec(project(tmp_path, reasoning="r1"))


# ---------------------------------------------------------------- the scripted server
def test_server_reasoning_content_and_inline_thinking(tmp_path):
    from generator.core.backend import Request, Sampling
    from generator.engine.backends.openai_http import OpenAIBackend

    def answer(body):
        prompt = body["messages"][-1]["content"]
        if prompt == "parsed":  # a server started with a reasoning parser
            return {"role": "assistant", "reasoning_content": "four words of thought", "content": "42"}
        if prompt == "field":
            return {"role": "assistant", "reasoning": "two words", "content": "7"}
        if prompt == "cut":  # the parser's answer when max_tokens ends the reasoning
            return {"role": "assistant", "reasoning_content": "so far", "content": None, "finish_reason": "length"}
        if prompt == "json":
            return '<think>draft</think>{"a": "</think>"}'
        return "<think>inline thought here</think>the answer"

    def ask(server, prompts, markers):
        b = OpenAIBackend(model=server.model, base_url=server.url)
        try:
            reqs = [Request(id=p, messages=({"role": "user", "content": p},), sampling=Sampling(max_tokens=32),
                            reasoning=markers) for p in prompts]
            return {r.id: r for r in b.generate(reqs)}
        finally:
            b.close()

    with OpenAIServer(answer=answer) as server:
        got = ask(server, ["parsed", "field", "cut", "inline", "json"], THINK)
        plain = ask(server, ["inline"], None)
    assert (got["parsed"].reasoning, got["parsed"].text, got["parsed"].reasoning_tokens) == ("four words of thought", "42", 4)
    assert (got["field"].reasoning, got["field"].text) == ("two words", "7")
    assert got["cut"].meta.get("reasoning_unfinished") and got["cut"].text == "" and got["cut"].finish_reason == "length"
    assert (got["inline"].reasoning, got["inline"].text) == ("inline thought here", "the answer")
    assert json.loads(got["json"].text) == {"a": "</think>"} and got["json"].reasoning == "draft"
    assert plain["inline"].reasoning is None and plain["inline"].text.startswith("<think>")  # no markers: no split
    with OpenAIServer(answer=answer, count_reasoning=False) as server:  # a server that does not count them
        est = ask(server, ["parsed"], THINK)["parsed"]
    assert est.completion_tokens == 5 and 0 < est.reasoning_tokens <= 5


def test_server_run_keeps_reasoning_and_statuses(tmp_path, monkeypatch):
    def answer(body):
        prompt = body["messages"][-1]["content"]
        if body.get("response_format"):
            return {"role": "assistant", "reasoning_content": "judging", "content": RUBRIC}
        if prompt.startswith("Solve"):
            return {"role": "assistant", "reasoning_content": "long thought", "content": None, "finish_reason": "length"}
        return {"role": "assistant", "reasoning_content": "plan it", "content": f"Problem {len(prompt)}"}

    with OpenAIServer(model="m1", answer=answer) as server:
        spec = project(tmp_path)
        spec.write_text(spec.read_text().replace("{name: m1, reasoning: qwen3}",
                                                 f"{{name: m1, backend: openai, base_url: '{server.url}', reasoning: qwen3}}"))
        run(load_spec(spec), out=tmp_path / "run", score=False)
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert (df["problem.reasoning"] == "plan it").all() and (df["problem.status"] == "ok").all()
    assert (df["solve.status"] == "no_answer").all() and (df["solve.reasoning"] == "long thought").all()
    assert (df["status"] == "no_answer").all() and (df["solve.reasoning_tokens"] == 2).all()


# ---------------------------------------------------------------- many answers per problem, verified
KEEP_SPEC = """name: k
seed: 11
topics:
  - items: [Fractions, Decimals, Ratios]
generations_per_topic: 2
models:
  - {{name: m1, reasoning: qwen3}}
sampling: {{max_tokens: 64}}
run: {{retries: 0}}
stages:
  - {{name: problem, kind: generate, template: gen}}
  - {{name: solve, kind: generate, template: solve, n: 6, output: true}}
  - name: check
    kind: verify
    check: reference
    target: solve
    reference: "{{{{ problem.text }}}}"
    keep: {keep}
"""


def keep_project(tmp_path: Path, keep: str) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    p = tmp_path / "spec.yaml"
    p.write_text(KEEP_SPEC.format(keep=keep))
    return p


def keep_answer(r):
    """A problem whose reference answer is 1; each re-solve answers seed % 3 (some right)."""
    if r.messages[-1]["content"].startswith("Solve"):
        return f"<think>try {r.sampling.seed}</think>Final answer: {r.sampling.seed % 3}"
    return "Problem. Final answer: 1"


def run_keep(spec: Path, out: Path):
    made = []

    def factory(cfg, **_):
        made.append(FakeBackend(model=cfg.name, responder=keep_answer))
        return made[-1]

    res = run(load_spec(spec), out=out, executor=LocalExecutor(backend_factory=factory), score=False)
    return res, [c for b in made for c in b.calls]


@pytest.mark.parametrize("keep,most", [("{correct: 2}", 2), ("all_correct", 6)])
def test_per_sample_verdicts_pass_rate_and_kept_rows(tmp_path, keep, most):
    res, calls = run_keep(keep_project(tmp_path, keep), tmp_path / "run")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    seeds = {}  # record -> each sample's seed, from the requests it sent
    for c in calls:
        rid, stage, _, sample = c.id.split("#")[0].split("/")
        if stage == "solve":
            seeds.setdefault(rid, {})[int(sample)] = c.sampling.seed
    assert len(seeds) == 6 and all(sorted(s) == list(range(6)) for s in seeds.values())  # a request per sample
    kept_rows = 0
    for rid, rows in df.group_by("id"):
        want = [seeds[rid[0]][k] % 3 == 1 for k in range(6)]
        correct = [k for k, ok in enumerate(want) if ok][:most]
        rows = rows.sort("sample", nulls_last=True)
        first = rows.row(0, named=True)
        assert first["check.verdicts"] == want and first["check.pass_rate"] == round(sum(want) / 6, 4)
        assert first["check.kept"] == correct
        if not correct:
            assert rows.height == 1 and first["status"] == "rejected" and first["sample"] is None
            continue
        kept_rows += rows.height
        assert rows["sample"].to_list() == correct and (rows["status"] == "ok").all()
        assert rows["final"].to_list() == [True] + [False] * (len(correct) - 1)
        for r in rows.iter_rows(named=True):
            assert r["text"] == r["solve.text"] == "Final answer: 1"
            assert r["reasoning"] == r["solve.reasoning"] == f"try {seeds[rid[0]][r['sample']]}"
        assert rows["completion_tokens"].to_list()[1:] == [0] * (len(correct) - 1)  # counted once per record
    assert kept_rows == sum(min(most, sum(s % 3 == 1 for s in v.values())) for v in seeds.values())
    assert res.manifest["counts"]["generated"] == 6  # records, not rows
    finals = df.filter(pl.col("final"))
    assert res.manifest["pipeline"]["pass_rates"]["check"] == {"records": 6, "mean": finals["check.pass_rate"].mean()}
    # re-solves are cached per sample: a second run pays for nothing
    again, calls2 = run_keep(keep_project(tmp_path, keep), tmp_path / "run")
    assert calls2 == []


def test_keep_needs_a_generate_target(tmp_path):
    spec = keep_project(tmp_path, "all_correct")
    spec.write_text(spec.read_text() + "  - {name: again, kind: verify, check: regex, pattern: x, target: check, "
                    "keep: all_correct}\n")
    with pytest.raises(SpecError, match="`keep:` turns the samples of a generate stage into rows; 'check' is a verify"):
        run(load_spec(spec), out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(c.name)),
            score=False)


def test_usage_table_shows_reasoning_tokens_only_for_a_thinking_run(tmp_path):
    from rich.console import Console

    from generator.cli.export import usage_table

    def table(run_dir):
        console = Console(width=250, record=True)
        console.print(usage_table(compute_usage(run_dir)))
        return console.export_text()

    run_fake(project(tmp_path), tmp_path / "run", "<think>add the parts carefully</think>Final answer: 4")
    text = table(tmp_path / "run")
    assert "reasoning tokens" in text and "44" in text.splitlines()[-2]  # the total row: 4 x (2 + 4 + 2 + 3)
    (tmp_path / "b").mkdir()
    spec = project(tmp_path / "b")
    spec.write_text(spec.read_text().replace("{name: m1, reasoning: qwen3}", "{name: m1}"))
    run_fake(spec, tmp_path / "plain", "Final answer: 4")
    assert "reasoning tokens" not in table(tmp_path / "plain")
