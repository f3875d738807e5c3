"""Every shipped output schema is bounded, and its longest answer fits the max_tokens it is given.

Structured decoding can only close the JSON in time when the grammar itself bounds the answer:
every string with maxLength, every list with maxItems. These tests check the mechanics (schema
bounds against token budgets), never what a model writes.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import jsonschema
import pytest

from generator.library.prompt_template import parse_template
from generator.library.schema_bounds import (MIN_CHARS_PER_TOKEN, FILLER, fits, unbounded, worst_case_chars,
                                             worst_case_instance, worst_case_json)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(ROOT.glob("templates/**/*.j2"))
SPECS = sorted(ROOT.glob("specs/*.yaml"))


def _structured() -> list[Path]:
    return [p for p in TEMPLATES if parse_template(p).output_schema is not None]


JUDGE_SCHEMAS: dict[str, dict] = {}  # "judge:<spec>/<stage>" -> the verdict schema that judge asks for


def _budgets() -> list[tuple[str, str, int]]:
    """(where, template or judge name, max_tokens) for every structured answer a shipped caller asks for."""
    from generator.config.spec import load_spec
    from generator.config.stages import JudgeStage
    from generator.engine.pipeline.judge import COMPARE_SCHEMA, rubric_schema
    from generator.engine.planner import resolve_spec
    from generator.library import growth

    out = []
    for spec_path in SPECS:
        spec = load_spec(spec_path)
        resolved = resolve_spec(spec)
        for tpl, _ in resolved.templates:
            if tpl.output_schema is None:
                continue
            for model in resolved.models:
                out.append((f"{spec_path.name} ({model.name})", tpl.name, resolved.sampling_for(model).max_tokens))
        for stage in spec.stages or []:
            if not isinstance(stage, JudgeStage):
                continue
            name = f"judge:{spec_path.stem}/{stage.name}"
            JUDGE_SCHEMAS[name] = rubric_schema(stage.criteria) if stage.criteria else COMPARE_SCHEMA
            for model in spec.models:
                if stage.model in (None, model.name):  # stage sampling over the model's over the spec's
                    budget = (stage.sampling.max_tokens or model.sampling.max_tokens or spec.sampling.max_tokens)
                    out.append((f"{spec_path.name} ({model.name})", name, budget))
    for fn, name in ((growth.expand_personas, "tools/persona_expand"), (growth.expand_topic_node, "tools/topic_expand")):
        out.append((f"growth.{fn.__name__}", name, inspect.signature(fn).parameters["max_tokens"].default))
    return out


def _schema(name: str) -> dict:
    if name.startswith("judge:"):
        return JUDGE_SCHEMAS[name]
    return parse_template(ROOT / "templates" / f"{name}.j2").output_schema


def test_every_shipped_schema_is_bounded():
    structured = _structured()
    assert len(structured) >= 13  # textbook x4, math x5, sft x2, tools x2
    problems = {p.relative_to(ROOT).as_posix(): unbounded(parse_template(p).output_schema) for p in structured}
    assert {k: v for k, v in problems.items() if v} == {}


def test_judge_verdicts_are_bounded_and_budgeted():
    judges = {name for _, name, _ in _budgets() if name.startswith("judge:")}
    assert {"judge:instruct_judged/quality", "judge:preference/pick"} <= judges
    assert {name: unbounded(JUDGE_SCHEMAS[name]) for name in judges} == {name: [] for name in judges}


def test_every_structured_template_is_used_with_a_budget():
    used = {name for _, name, _ in _budgets()}
    assert {parse_template(p).name for p in _structured()} <= used


@pytest.mark.parametrize("where,name,max_tokens", _budgets(), ids=lambda v: str(v))
def test_worst_case_characters_fit_max_tokens(where, name, max_tokens):
    chars = len(worst_case_json(_schema(name)))
    assert chars / MIN_CHARS_PER_TOKEN <= max_tokens, (
        f"{name} in {where}: the longest answer has {chars} characters, more than {max_tokens} tokens "
        f"at {MIN_CHARS_PER_TOKEN} characters per token; lower maxLength/maxItems or raise max_tokens")


@pytest.mark.slow  # the embedded tokenizer comes from the converted model (converted once, ~30 s)
def test_worst_case_tokens_fit_max_tokens_with_the_embedded_tokenizer():
    from tokenizers import Tokenizer

    from generator.mix.tokens import load_tokenizer

    tok = Tokenizer.from_file(str(load_tokenizer("smollm2-135m").path))
    assert len(FILLER) / len(tok.encode(FILLER).ids) > MIN_CHARS_PER_TOKEN  # the margin is real
    over = {}
    for where, name, max_tokens in _budgets():
        n = len(tok.encode(worst_case_json(_schema(name))).ids)
        if n > max_tokens:
            over[f"{name} in {where}"] = (n, max_tokens)
    assert over == {}


def test_unbounded_names_each_open_place():
    schema = {"type": "object", "additionalProperties": False, "properties": {
        "s": {"type": "string"},
        "a": {"type": "array", "items": {"type": "string", "maxLength": 5}},
        "i": {"type": "integer", "minimum": 0},
        "o": {"type": "object", "properties": {"x": {"type": "boolean"}}},
        "ok": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
        "e": {"type": "string", "enum": ["a", "b"]}}}
    assert unbounded(schema) == ["$.s: string without maxLength", "$.a: array without maxItems",
                                 "$.i: integer without maximum",
                                 "$.o: object without additionalProperties: false"]


@pytest.mark.parametrize("path", _structured(), ids=lambda p: p.stem)
def test_worst_case_is_valid_and_at_every_bound(path):
    schema = parse_template(path).output_schema
    inst = worst_case_instance(schema)
    jsonschema.validate(inst, schema)

    def walk(s: dict, v) -> None:
        if s.get("type") == "string" and "enum" not in s:
            assert len(v) == s["maxLength"]
        elif s.get("type") == "array":
            assert len(v) == s["maxItems"]
            for x in v:
                walk(s["items"], x)
        elif s.get("type") == "object":
            for k, sub in s.get("properties", {}).items():
                walk(sub, v[k])

    walk(schema, inst)
    assert json.loads(worst_case_json(schema)) == inst
    assert worst_case_chars(schema) == len(worst_case_json(schema))  # counted without building it


def test_fits_compares_the_worst_case_with_the_budget():
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "string", "maxLength": 100}}}
    chars = len(worst_case_json(schema))  # 100 characters and the JSON around them
    assert fits(schema, int(chars / MIN_CHARS_PER_TOKEN) + 1) and not fits(schema, int(chars / MIN_CHARS_PER_TOKEN) - 1)
    assert not fits(None, 10**6)
    assert not fits({"type": "object", "additionalProperties": False,
                     "properties": {"a": {"type": "string"}}}, 10**6)  # unbounded: no budget is enough
    mixed = {"type": "object", "additionalProperties": False, "properties": {
        "n": {"type": "integer", "minimum": -5, "maximum": 100}, "b": {"type": "boolean"}, "z": {"type": "null"},
        "e": {"enum": ["short", "a longer one"]}, "o": {"anyOf": [{"type": "string", "maxLength": 3},
                                                                  {"type": "string", "maxLength": 9}]},
        "l": {"type": "array", "maxItems": 0, "items": {"type": "string", "maxLength": 4}},
        "x": {"type": "number", "minimum": 0, "maximum": 1.5}}}
    assert worst_case_chars(mixed) == len(worst_case_json(mixed))


@pytest.mark.parametrize("schema", [
    {"type": "array", "maxItems": 10**12, "items": {"type": "string", "maxLength": 10**12}},  # not built
    {"type": "object", "additionalProperties": False, "properties": {"a": True}},
    {"type": "object", "additionalProperties": False, "properties": {"a": {"type": ["string", "null"], "maxLength": 3}}},
    {"$ref": "#/definitions/x"},
    {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string", "maxLength": float("inf")}}},
    {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string", "maxLength": "many"}}},
    [1, 2], "a string",
], ids=lambda s: str(s)[:40])
def test_fits_is_false_for_schemas_it_cannot_size_and_never_raises(schema):
    assert fits(schema, 1000) is False


def test_worst_case_refuses_an_unbounded_schema():
    with pytest.raises(ValueError, match="string without maxLength"):
        worst_case_instance({"type": "object", "additionalProperties": False,
                             "properties": {"s": {"type": "string"}}})
