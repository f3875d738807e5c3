"""`synthgen library | init | render | validate | schema`, and persona/topic expansion."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from generator.testing.fake import FakeBackend
from generator.cli.main import main
from generator.library.growth import expand_personas, expand_topic_node
from generator.library.catalog import load_personas, load_topic_tree


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_library_lists_counts():
    res = invoke("library")
    assert res.exit_code == 0
    assert "core" in res.output and "1200" in res.output and "math/word_problem" in res.output


def test_init_copies_library_and_refuses_to_clobber(tmp_path):
    res = invoke("init", str(tmp_path / "proj"))
    assert res.exit_code == 0
    assert (tmp_path / "proj" / "templates" / "math" / "word_problem.j2").exists()
    assert (tmp_path / "proj" / "specs" / "math.yaml").exists()
    assert not list((tmp_path / "proj").rglob("*.py"))
    # a project copy validates on its own
    assert invoke("validate", str(tmp_path / "proj" / "specs" / "math.yaml")).exit_code == 0
    again = CliRunner().invoke(main, ["init", str(tmp_path / "proj")])
    assert again.exit_code == 2 and "--force" in again.output


def test_validate_reports_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntopics:\n  - items: [a]\ntemplates:\n  - template: math/word_problem\n")
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert "undefined variable(s) persona" in res.output and "add a `personas:` section" in res.output
    assert lines[0].startswith("error:")


def test_validate_notes_schemas_that_may_not_fit_max_tokens(proj, tmp_path):
    shipped = CliRunner().invoke(main, ["validate", "specs/math.yaml"])
    assert shipped.exit_code == 0 and "note:" not in shipped.stderr
    res = CliRunner().invoke(main, ["validate", str(proj / "spec.yaml")])  # card: ~430 characters, 64 tokens
    assert res.exit_code == 0 and res.stdout.startswith("ok ")
    assert res.stderr.splitlines() == [
        "note: template 'card' on smollm2-135m: its longest answer is about 171 tokens (2.5 characters per "
        "token), more than max_tokens 64; raise sampling.max_tokens or lower the schema's maxLength/maxItems"]
    assert "note:" not in CliRunner().invoke(main, ["validate", str(proj / "spec.yaml"),
                                                    "--set", "sampling.max_tokens=200"]).stderr
    tpl = proj / "templates" / "card.j2"
    tpl.write_text(tpl.read_text().replace("answer: {type: string, maxLength: 200}", "answer: {type: string}"))
    res = CliRunner().invoke(main, ["validate", str(proj / "spec.yaml"), "--set", "sampling.max_tokens=200"])
    assert res.exit_code == 0 and "template 'card': its output schema has no length bound it can size ($.answer: string " \
        "without maxLength)" in res.stderr


@pytest.mark.parametrize("answer", ["true", "{type: [string, 'null'], maxLength: 5}", "{type: string, maxLength: .inf}",
                                    "{type: string, maxLength: many}", "{$ref: '#/x'}"])
def test_validate_notes_a_schema_it_cannot_size_without_failing(proj, answer):
    tpl = proj / "templates" / "card.j2"
    tpl.write_text(tpl.read_text().replace("answer: {type: string, maxLength: 200}", f"answer: {answer}"))
    res = CliRunner().invoke(main, ["validate", str(proj / "spec.yaml"), "--set", "sampling.max_tokens=200"])
    if res.exit_code == 2:  # refused as a template error: one line naming the file
        assert res.stderr.startswith("error:") and "card.j2" in res.stderr and len(res.stderr.splitlines()) == 1
        return
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("note: template 'card': its output schema has no length bound it can size ($.")


def test_render_and_schema():
    res = invoke("render", "specs/tiny.yaml", "-n", "2", "--json")
    assert res.exit_code == 0 and res.output.count('"template"') == 2
    schema = json.loads(invoke("schema").output)
    assert "topics" in schema["properties"]


def test_set_rejects_malformed_override():
    res = CliRunner().invoke(main, ["validate", "specs/tiny.yaml", "--set", "seed"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def _persona_answer(req):
    text = req.messages[-1]["content"]
    # a deterministic, varied persona per request (different words per request id)
    words = ["harbor", "violin", "orchard", "glacier", "bakery", "census", "lantern", "quarry", "tundra", "mosaic",
             "falcon", "canal", "meteor", "saddle", "ember", "prism"]
    i = sum(map(ord, req.id)) % len(words)
    j = (i * 7 + 3) % len(words)
    return json.dumps({"description": f"A {words[i]} keeper who studies {words[j]} maps in {req.id}",
                       "occupation": f"{words[i]} keeper", "age_band": "35-44", "region": "Chile",
                       "expertise": "expert", "interests": [words[j], words[(j + 1) % len(words)]]}) \
        if "Answer in JSON" in text else "{}"


def test_expand_personas_drops_duplicates_and_invalid():
    seeds = load_personas(__import__("generator.library.catalog", fromlist=["x"]).resolve("personas", "core", None))[:30]
    answers = iter(range(10_000))

    def responder(req):
        n = next(answers)
        if n % 5 == 0:
            return "not json"
        if n % 5 == 1:  # exact repeat of a persona already kept -> near duplicate
            return json.dumps({"description": seeds[0]["description"], "occupation": "x", "age_band": "65+",
                               "region": "y", "expertise": "novice", "interests": ["a", "b"]})
        return _persona_answer(req)

    fake = FakeBackend(responder=responder)
    new, stats = expand_personas(seeds, fake, count=5, seed=1)
    assert 0 < len(new) <= 5 and stats.invalid > 0 and stats.near_duplicates > 0
    assert len({p["id"] for p in new}) == len(new)
    assert fake.calls and all(c.json_schema is not None for c in fake.calls)  # every request is structured


def test_expand_topic_node_adds_distinct_children(tmp_path):
    tree = tmp_path / "t.yaml"
    tree.write_text(yaml.safe_dump({"name": "t", "description": "d", "nodes": [
        {"name": "Fractions", "children": [{"name": "Adding fractions", "keywords": ["a", "b", "c"]}]}]}))
    answer = json.dumps({"subtopics": [
        {"name": "Adding fractions", "keywords": ["x", "y", "z"]},            # existing: dropped
        {"name": "Comparing fractions", "keywords": ["benchmark", "half", "order"]},
        {"name": "Comparing fractions", "keywords": ["again", "same", "name"]},  # duplicate: dropped
        {"name": "Fraction word problems", "keywords": ["recipe", "share", "part"]},
        {"name": "Bad", "keywords": ["one"]}]})                              # too few keywords: invalid
    fake = FakeBackend(responder=lambda r: answer)
    raw, new, stats = expand_topic_node(tree, "Fractions", fake, count=6)
    assert [n["name"] for n in new] == ["Comparing fractions", "Fraction word problems"]
    assert stats.near_duplicates >= 2 and stats.invalid >= 1
    out = tmp_path / "t2.yaml"
    from generator.library.growth import dump_tree

    out.write_text(dump_tree(raw))
    assert len(load_topic_tree(out).leaves()) == 3


@pytest.mark.slow
def test_expand_personas_with_the_embedded_model(vllm_backend):
    """Mechanics on the real engine: requests reach the model and every answer is accounted for
    (kept, invalid, near duplicate, or past the count); how many survive depends on the model."""
    seeds = load_personas(__import__("generator.library.catalog", fromlist=["x"]).resolve("personas", "core", None))[:20]
    new, stats = expand_personas(seeds, vllm_backend, count=2, seed=3)
    assert stats.requested >= 5  # the first round asks for int(2 * 1.5) + 2
    assert 1 <= stats.model_calls <= stats.requested  # answers are read until `count` are kept
    assert stats.kept == len(new) <= 2
    assert stats.kept + stats.invalid + stats.near_duplicates in (stats.model_calls, stats.model_calls - 1)
    assert (len(new) < 2) == bool(stats.notes)
    assert len({p["id"] for p in new}) == len(new)
    for p in new:  # what was kept is new, parsed, and tied to its seed
        assert p["description"] not in {s["description"] for s in seeds}
        assert p["expanded_from"] in {s["id"] for s in seeds}
