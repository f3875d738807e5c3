"""Pipeline specs checked without a model: stage order, cycles, unknown stages and fields,
templates reading stages that do not precede them, and deterministic per-stage requests."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from generator import validate
from generator.config.spec import load_spec
from generator.core.errors import SpecError
from generator.engine.pipeline.execute import prepare
from generator.engine.planner import resolve_spec

TEMPLATES = {
    "gen.j2": "Write one short problem about {{ subtopic }}.\n",
    "solve.j2": "Solve this and end with 'Final answer: N'.\n\n{{ problem.text }}\n",
    "both.j2": "Compare:\n{{ problem.text }}\n{{ solution.text }}\n",
    "typo.j2": "Solve: {{ problem.txt }}\n",
    "jsonq.j2": "---\noutput_schema:\n  type: object\n  properties: {question: {type: string}}\n  required: [question]\n---\n"
                "Write a question about {{ subtopic }} as JSON.\n",
    "usejson.j2": "Answer: {{ problem.json.question }}\n",
    "usejson_bad.j2": "Answer: {{ problem.json.answer }}\n",
}
HEAD = """name: p
seed: 3
topics:
  - items: [Fractions, Decimals, Percentages]
generations_per_topic: 2
models:
  - name: m1
  - name: m2
sampling: {max_tokens: 32}
"""


def project(tmp_path: Path, stages: str) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEAD + "stages:\n" + stages)
    return spec


def check(path: Path):
    spec = load_spec(path)
    return prepare(resolve_spec(spec))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if needle in l)


def test_order_follows_references_and_listing(tmp_path):
    p = project(tmp_path, """\
  - {name: problem, kind: generate, template: gen}
  - {name: check, kind: filter, expr: "solution.status == 'ok' and judge_b.status == 'ok'"}
  - {name: solution, kind: generate, template: solve}
  - {name: judge_b, kind: verify, check: regex, target: solution, pattern: "\\\\d"}
  - {name: other, kind: generate, template: solve, model: m2}
""")
    pipe = check(p)
    assert pipe.order == ["problem", "solution", "judge_b", "check", "other"]
    assert pipe.entry == "problem" and pipe.output == "other"  # the last generate stage with n: 1
    assert pipe.descendants["problem"] == {"solution", "judge_b", "check", "other"}
    assert pipe.descendants["solution"] == {"judge_b", "check"}
    assert pipe.models_used("m1") == {"m1", "m2"}


def test_cycle_is_one_line_with_position(tmp_path):
    p = project(tmp_path, """\
  - {name: problem, kind: generate, template: gen}
  - name: a
    kind: generate
    template: solve
    after: [b]
  - name: b
    kind: verify
    check: regex
    target: a
    pattern: x
""")
    with pytest.raises(SpecError) as exc:
        check(p)
    msg = str(exc.value)
    assert "cycle" in msg and ("a -> b -> a" in msg or "b -> a -> b" in msg)
    assert re.match(rf"{re.escape(str(p))}:\d+:\d+: ", msg)


@pytest.mark.parametrize("stage, needle, words", [
    ("{name: f, kind: filter, expr: 'nope.passed'}", "name: f", "'nope', which is no stage"),
    ("{name: v, kind: verify, check: regex, target: ghost, pattern: x}", "name: v", "'ghost', which is no stage"),
    ("{name: f, kind: filter, expr: 'problem.agree >= 2'}", "name: f", "stage 'problem' has"),
    ("{name: f, kind: filter, expr: 'problem'}", "name: f", "stage 'problem' has"),
    ("{name: f, kind: filter, expr: '__import__(\"os\")'}", "name: f", "not allowed"),
    ("{name: f, kind: filter, expr: 'problem.text[0]'}", "name: f", "not allowed"),
    ("{name: s, kind: generate, template: gen, model: m9}", "name: s", "model 'm9' is not in `models:`"),
    ("{name: v, kind: verify, check: agreement, target: problem, against: problem, "
     "on_reject: {regenerate: w}}", "name: v", "`regenerate: w` is no stage"),
    ("{name: j, kind: judge, compare: [problem, problem2]}", "name: j", "'problem2', which is no stage"),
])
def test_reference_errors_name_the_line(tmp_path, stage, needle, words):
    p = project(tmp_path, "  - {name: problem, kind: generate, template: gen}\n  - " + stage + "\n")
    with pytest.raises(SpecError) as exc:
        check(p)
    msg = str(exc.value)
    assert words in msg, msg
    assert msg.startswith(f"{p}:{line_of(p, needle)}:")


def test_regenerate_must_precede_the_rejecting_stage(tmp_path):
    p = project(tmp_path, """\
  - {name: problem, kind: generate, template: gen}
  - {name: solution, kind: generate, template: solve}
  - {name: side, kind: generate, template: gen}
  - name: v
    kind: verify
    check: regex
    target: solution
    pattern: x
    on_reject: {regenerate: side}
""")
    with pytest.raises(SpecError, match="`regenerate: side` does not precede 'v'"):
        check(p)


def test_template_reading_a_later_stage_is_a_cycle(tmp_path):
    # `both` reads `solution`, and `solution` runs after `both`: no order satisfies it
    p = project(tmp_path, """\
  - {name: problem, kind: generate, template: gen}
  - {name: solution, kind: generate, template: solve, after: [x]}
  - {name: x, kind: generate, template: both}
""")
    with pytest.raises(SpecError, match="cycle: (solution -> x -> solution|x -> solution -> x)"):
        check(p)


def test_template_field_typos_fail_at_the_template(tmp_path):
    p = project(tmp_path, "  - {name: problem, kind: generate, template: gen}\n"
                          "  - {name: s, kind: generate, template: typo}\n")
    with pytest.raises(SpecError, match=r"typo\.j2:1: .*txt"):
        check(p)


def test_structured_fields_are_checked_against_the_output_schema(tmp_path):
    ok = project(tmp_path, "  - {name: problem, kind: generate, template: jsonq}\n"
                           "  - {name: s, kind: generate, template: usejson}\n")
    check(ok)
    bad = project(tmp_path, "  - {name: problem, kind: generate, template: jsonq}\n"
                            "  - {name: s, kind: generate, template: usejson_bad}\n")
    with pytest.raises(SpecError, match=r"usejson_bad\.j2:1: .*answer"):
        check(bad)


def test_first_stage_must_be_a_plain_generate_stage(tmp_path):
    p = project(tmp_path, "  - {name: f, kind: filter, expr: 'attempt > 0'}\n")
    with pytest.raises(SpecError, match="first stage must be a generate stage"):
        check(p)
    p = project(tmp_path, "  - {name: s, kind: generate, template: solve}\n")
    with pytest.raises(SpecError, match="(undefined variable|first stage).*problem|problem"):
        check(p)


@pytest.mark.parametrize("bad, words", [
    ("{name: s, kind: generate}", "exactly one of `template:` or `templates:`"),
    ("{name: s, kind: judge, target: problem}", "needs `criteria:`"),
    ("{name: s, kind: verify, check: regex, target: problem}", "check: regex needs `pattern:`"),
    ("{name: s, kind: verify, check: regex, target: problem, pattern: '('}", "not a valid regular expression"),
    ("{name: s, kind: verify, check: function, target: problem, function: nocolon}", "module:function"),
    ("{name: topic, kind: generate, template: gen}", "reserved"),
    ("{name: s, kind: sort, template: gen}", "kind"),
])
def test_stage_shape_errors(tmp_path, bad, words):
    p = project(tmp_path, "  - {name: problem, kind: generate, template: gen}\n  - " + bad + "\n")
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    assert words in str(exc.value)
    assert str(exc.value).startswith(f"{p}:")


def test_user_function_must_exist_beside_the_spec(tmp_path):
    stages = ("  - {name: problem, kind: generate, template: gen}\n"
              "  - {name: v, kind: verify, check: function, target: problem, function: checks:is_good}\n")
    p = project(tmp_path, stages)
    with pytest.raises(SpecError, match="no module 'checks'"):
        check(p)
    (tmp_path / "checks.py").write_text("def other(row):\n    return True\n")
    with pytest.raises(SpecError, match="defines no function 'is_good'"):
        check(p)
    (tmp_path / "checks.py").write_text("def is_good(row):\n    return True, 'fine'\n")
    check(p)


def test_spec_without_stages_keeps_its_single_stage_behaviour(proj):
    spec = load_spec(proj / "spec.yaml")
    assert spec.stages is None
    resolved = validate(spec)
    assert {t.name for t, _ in resolved.templates} == {"qa", "card"}


def test_templates_and_stages_are_exclusive(tmp_path):
    p = project(tmp_path, "  - {name: problem, kind: generate, template: gen}\n")
    p.write_text(p.read_text() + "templates:\n  - template: gen\n")
    with pytest.raises(SpecError, match="remove `templates:`"):
        load_spec(p)
