"""Strict spec loading: every error names file:line:col and the fix."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from generator.core.errors import SpecError, TemplateError
from generator.engine.planner import expand, resolve_spec, validate
from generator.config.spec import json_schema, load_spec


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


BASE = """\
name: t
seed: 1
topics:
  - tree: mini
templates:
  - template: qa
personas:
  file: mini
"""


def test_valid_spec_loads(proj):
    spec = load_spec(write(proj / "s.yaml", BASE))
    assert spec.name == "t" and spec.models[0].name == "smollm2-135m"
    validate(resolve_spec(spec))


def test_unknown_key_points_at_the_key(proj):
    p = write(proj / "s.yaml", BASE + "generatons_per_topic: 3\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value).startswith(f"{p}:9:1: unknown key 'generatons_per_topic'")


def test_unknown_nested_key(proj):
    p = write(proj / "s.yaml", BASE.replace("  - template: qa\n", "  - template: qa\n    wieght: 2\n"))
    with pytest.raises(SpecError, match=r"s\.yaml:7:5: unknown key 'wieght'"):
        load_spec(p)


def test_duplicate_key_rejected(proj):
    p = write(proj / "s.yaml", BASE + "seed: 2\n")
    with pytest.raises(SpecError, match=r"s\.yaml:9:1: duplicate key 'seed' \(first written at line 2\)"):
        load_spec(p)


def test_wrong_type(proj):
    p = write(proj / "s.yaml", BASE + "generations_per_topic: many\n")
    with pytest.raises(SpecError, match=r"s\.yaml:9:\d+: 'generations_per_topic': .*integer"):
        load_spec(p)


def test_out_of_range_value(proj):
    p = write(proj / "s.yaml", BASE + "sampling:\n  top_p: 1.5\n")
    with pytest.raises(SpecError, match=r"s\.yaml:10:\d+: 'sampling.top_p'"):
        load_spec(p)


def test_missing_required_key(proj):
    p = write(proj / "s.yaml", "name: t\ntemplates:\n  - template: qa\n")
    with pytest.raises(SpecError, match=r"missing required key 'topics'"):
        load_spec(p)


def test_invalid_yaml_syntax(proj):
    p = write(proj / "s.yaml", "name: t\ntopics: [a, b\n")
    with pytest.raises(SpecError, match=r"s\.yaml:\d+:\d+: invalid YAML"):
        load_spec(p)


def test_missing_topic_file(proj):
    p = write(proj / "s.yaml", BASE.replace("tree: mini", "tree: nosuch"))
    with pytest.raises(SpecError, match=r"s\.yaml:4:\d+: no topic 'nosuch'.*fix `tree:`"):
        resolve_spec(load_spec(p))


def test_missing_template_file(proj):
    p = write(proj / "s.yaml", BASE.replace("template: qa", "template: nope/none"))
    with pytest.raises(SpecError, match=r"s\.yaml:6:\d+: no template 'nope/none'"):
        resolve_spec(load_spec(p))


def test_template_variable_without_personas(proj):
    p = write(proj / "s.yaml", BASE.replace("personas:\n  file: mini\n", ""))
    with pytest.raises(TemplateError, match=r"qa\.j2:\d+: template 'qa' uses undefined variable\(s\) persona.*"
                                             r"add a `personas:` section"):
        validate(resolve_spec(load_spec(p)))


def test_template_attribute_typo_caught_by_strict_render(proj):
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("persona.description", "persona.descripton"))
    with pytest.raises(TemplateError, match=r"descripton"):
        validate(resolve_spec(load_spec(write(proj / "s.yaml", BASE))))


def test_template_undeclared_variable(proj):
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("{{ subtopic }}", "{{ subtopic }} {{ mood }}"))
    with pytest.raises(TemplateError, match=r"qa\.j2:2: template uses mood but its front matter"):
        resolve_spec(load_spec(write(proj / "s.yaml", BASE)))


def test_vars_feed_templates(proj):
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("variables: [", "variables: [mood, ").replace(
        "{{ subtopic }}", "{{ subtopic }} ({{ mood }})"))
    spec = load_spec(write(proj / "s.yaml", BASE + "vars:\n  mood: calm\n"))
    r = resolve_spec(spec)
    validate(r)
    records = expand(r)
    assert records and all("(calm)" in rec.messages[-1]["content"] for rec in records)


def test_sandbox_blocks_unsafe_attribute(proj):
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("{{ subtopic }}", "{{ subtopic.__class__.__mro__ }}"))
    with pytest.raises(TemplateError):
        validate(resolve_spec(load_spec(write(proj / "s.yaml", BASE))))


def test_set_overrides(proj):
    spec = load_spec(write(proj / "s.yaml", BASE), {"seed": "9", "sampling.max_tokens": "33"})
    assert spec.seed == 9 and spec.sampling.max_tokens == 33


def test_openai_backend_needs_url(proj):
    p = write(proj / "s.yaml", BASE + "models:\n  - name: m\n    backend: openai\n")
    with pytest.raises(SpecError, match="needs `base_url`"):
        load_spec(p)


def test_json_schema_lists_fields():
    schema = json_schema()
    assert {"name", "topics", "templates", "models", "seed"} <= set(schema["properties"])
    json.dumps(schema)


def test_error_is_one_line(proj):
    p = write(proj / "s.yaml", BASE + "bogus: 1\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "\n" not in str(e.value) and re.match(r"^.+:\d+:\d+: ", str(e.value))


def test_mix_section_is_checked_at_load(proj):
    p = write(proj / "s.yaml", BASE + "mix:\n  ratio: '4:1'\n  sythetic: []\n")
    with pytest.raises(SpecError, match=r"s\.yaml:11:3: .*sythetic"):
        load_spec(p)
