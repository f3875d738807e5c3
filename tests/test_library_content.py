"""The built-in prompt library: templates, renderers, personas and topic trees.

Fast and model-free: everything here reads files and runs pure Python.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import pytest

from generator.library.catalog import load_topic_tree
from generator.library.renderers import ANSWER_LEADS, RENDERERS, render
from generator.library.prompt_template import parse_template

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "templates").rglob("*.j2"))
PERSONAS = ROOT / "personas" / "core.jsonl"
AGE_BANDS = {"13-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"}
EXPERTISE = {"novice", "intermediate", "expert"}
LEVEL_RE = re.compile(r"^(kindergarten|grade ([1-9]|1[0-2])|college)$")

# Near-duplicate thresholds.
# Personas: Jaccard similarity of word 3-shingle sets of the descriptions. Document-level
# dedup commonly treats Jaccard >= 0.7-0.8 on 5-grams as a duplicate; for one-sentence
# descriptions built from shared phrasings, 3-shingles and a stricter 0.5 fail any pair that
# shares most of its wording, i.e. the same occupation, place and situation with only
# interests or an age changed. Pairs that share only a sentence frame and one clause score
# around 0.3-0.4.
PERSONA_DUP_THRESHOLD = 0.5
# Topic leaves: Jaccard similarity of the word sets of name + keywords (lowercased, stop words
# dropped, plural -s stripped). Leaves are a few words each; at 0.6 two leaves of equal size
# share at least 3/4 of their vocabulary, which means they restate one another. Legitimate
# neighbours (addition vs subtraction with regrouping) share about half and score below 0.5.
LEAF_DUP_THRESHOLD = 0.6


# --------------------------------------------------------------------------- helpers

def _leaves(nodes, path=()):
    for n in nodes:
        if n.children:
            yield from _leaves(n.children, path + (n.name,))
        else:
            yield n


def _jaccard_max(sets: list[set]) -> tuple[float, int, int]:
    """Highest Jaccard similarity over all pairs, comparing only pairs that share an element."""
    index: dict = defaultdict(list)
    for i, s in enumerate(sets):
        for x in s:
            index[x].append(i)
    best = (0.0, -1, -1)
    for i, s in enumerate(sets):
        shared: Counter = Counter()
        for x in s:
            for j in index[x]:
                if j > i:
                    shared[j] += 1
        for j, inter in shared.items():
            jac = inter / (len(s) + len(sets[j]) - inter)
            if jac > best[0]:
                best = (jac, i, j)
    return best


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


STOP = set("a an the of and or in on to for with by from as at is are its into vs versus".split())


def _leaf_words(name: str, keywords: list[str]) -> set[str]:
    words = re.findall(r"[a-z0-9]+", (name + " " + " ".join(keywords)).lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in STOP}


@pytest.fixture(scope="module")
def personas() -> list[dict]:
    return [json.loads(line) for line in PERSONAS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trees():
    return {name: load_topic_tree((ROOT / "topics" / f"{name}.yaml").resolve())
            for name in ("math", "general")}


# --------------------------------------------------------------------------- templates

# A plausible answer for each structured template (by renderer).
TEXTBOOK_EXAMPLE = {
    "passages": [
        {"nuanced_content_to_be_learned": ["Ice cores trap air bubbles from past atmospheres"],
         "passage": "Each winter's snow buries the last, and the air between the grains is sealed "
                    "into bubbles as the snow turns to ice."},
        {"nuanced_content_to_be_learned": ["Layer counting dates the ice", "Thinning with depth"],
         "passage": "Near the surface, annual layers can be counted like tree rings; deeper down "
                    "the ice flows and thins, so models of ice flow take over."},
        {"nuanced_content_to_be_learned": ["Isotope ratios record temperature"],
         "passage": "The ratio of heavy to light oxygen in the ice tracks the temperature at "
                    "which the snow formed."},
    ],
    "multiple_choice_question": {
        "question": "What do air bubbles in an ice core preserve?",
        "options": ["Air from the time the snow was buried",
                    "Water vapour from the present day", "Volcanic ash only",
                    "Oxygen produced by the ice itself"],
        "answer_label": "Air from the time the snow was buried",
        "step_by_step_answer_explanation": "The bubbles close off as snow compacts, so they hold "
                                           "air of that time; the other options do not.",
    },
}
EXAMPLES = {
    "textbook_mcq": TEXTBOOK_EXAMPLE,
    "sft_pair": {"instruction": "My sourdough starter smells like nail polish. Is it ruined?",
                 "response": "No. That smell means the yeast is hungry; feed it twice a day."},
    "sft_chat": {"turns": [
        {"user": "How often should I water tomatoes in pots?",
         "assistant": "Daily in hot weather; check that the top 2 cm of soil is dry first."},
        {"user": "And if I go away for a weekend?",
         "assistant": "Water deeply, add mulch and move the pots to light shade."},
    ]},
    "math_solution": {"problem": "Ana buys 3 bags of 12 apples and gives away 9. How many are left?",
                      "steps": ["Step 1: 3 x 12 = 36 apples.", "2. 36 - 9 = 27 apples left.",
                                "Check: 27 + 9 = 36."],
                      "answer": "27."},
    "math_mistake": {"problem": "Sam adds 1/2 and 1/3 of a cup of milk. What is 1/2 + 1/3?", "wrong_solution": "1/2 + 1/3 = 2/5.",
                     "why_wrong": "The tops and bottoms were added; the denominators must match first.",
                     "steps": ["1/2 = 3/6 and 1/3 = 2/6.", "3/6 + 2/6 = 5/6."], "answer": "5/6"},
    "math_dialogue": {"problem": "A pizza has 8 slices and you eat 3. What fraction is left?",
                      "turns": [{"student": "3/8?", "tutor": "That is what you ate. What is left?"},
                                {"student": "8 - 3 = 5, so 5/8.", "tutor": "Right."}],
                      "answer": "5/8"},
    "math_explanation": {"fact": "Adding two odd numbers gives an even number.",
                         "steps": ["An odd number is 2a + 1 and another is 2b + 1.",
                                   "Their sum is 2a + 2b + 2 = 2(a + b + 1), a multiple of 2."],
                         "example": "7 + 9 = 16, and 16 = 2 x 8."},
}
CONTEXT_TOPIC = {"topic": "Natural Sciences / Earth Sciences", "subtopic": "Glaciers and ice sheets",
                 "keywords": ["ice cores", "calving"], "level": None,
                 "topic_path": "Natural Sciences / Earth Sciences / Glaciers and ice sheets"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT / "templates")))
def test_template_parses_and_declares_front_matter(path: Path):
    tpl = parse_template(path)
    front = path.read_text(encoding="utf-8").split("---")[1]
    for key in ("name", "description", "purpose", "variables"):
        assert re.search(rf"^{key}:", front, re.M), f"{path.name}: front matter lacks `{key}`"
    assert tpl.name == str(path.relative_to(ROOT / "templates").with_suffix(""))
    assert tpl.description
    if tpl.renderer is not None:
        assert tpl.renderer in RENDERERS, f"{tpl.name}: unknown renderer {tpl.renderer}"
        assert tpl.output_schema is not None, f"{tpl.name}: a renderer needs an output_schema"


@pytest.mark.parametrize("path", [p for p in TEMPLATES if parse_template(p).output_schema],
                         ids=lambda p: str(p.relative_to(ROOT / "templates")))
def test_structured_template_schema_and_example(path: Path):
    tpl = parse_template(path)
    jsonschema.Draft202012Validator.check_schema(tpl.output_schema)
    if tpl.renderer is None:
        return  # a tool template (its JSON feeds the library, not the training text)
    example = EXAMPLES[tpl.renderer]
    jsonschema.Draft202012Validator(tpl.output_schema).validate(example)
    text = render(tpl.renderer, example, seed=7)
    assert text.strip()


def test_library_templates_render_with_plan_variables():
    """The library's own templates render with the variables a plan provides."""
    persona = {"id": "p0001", "description": "A 34-year-old nurse in Lagos, Nigeria.",
               "occupation": "nurse", "age_band": "25-34", "region": "Nigeria",
               "expertise": "intermediate", "interests": ["chess", "running"]}
    for path in TEMPLATES:
        tpl = parse_template(path)
        if tpl.name.startswith(("tools/", "pipeline/", "dialogue/")):  # pipeline/, dialogue/: stage templates
            continue
        ctx = dict(CONTEXT_TOPIC, topics=[CONTEXT_TOPIC] * tpl.topics_per_prompt,
                   persona=persona, personas=[persona] * tpl.personas_per_prompt)
        ctx.update({k: v[0] for k, v in tpl.choices.items()})
        for k, values in tpl.choices.items():  # every choice value renders (e.g. style guides)
            for v in values:
                tpl.render_messages(dict(ctx, **{k: v}))
        user = tpl.render_messages(ctx)[-1]["content"]
        assert "Glaciers and ice sheets" in user or "ice cores" in user, tpl.name
        assert set(tpl.variables) <= set(ctx) | set(tpl.choices), tpl.name


def test_expected_library_templates_exist():
    names = {parse_template(p).name for p in TEMPLATES}
    expected = {
        "textbook/topic", "textbook/topic_style", "textbook/topic_style_persona",
        "textbook/multi_topic_style_persona", "math/word_problem", "math/multi_step",
        "math/common_mistake", "math/socratic_dialogue", "math/proof_or_explanation",
        "sft/single_turn", "sft/multi_turn",
    }
    assert expected <= names
    by_name = {parse_template(p).name: parse_template(p) for p in TEMPLATES}
    assert by_name["textbook/topic_style_persona"].personas_per_prompt == 5
    assert by_name["textbook/multi_topic_style_persona"].topics_per_prompt == 3
    assert by_name["textbook/topic_style"].choices["style"] == [
        "textbook_narrative", "textbook_academic", "blogpost", "wikihow"]


# --------------------------------------------------------------------------- renderers

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_renderer_deterministic_and_varied(name: str):
    assert name in RENDERERS
    outputs = [render(name, EXAMPLES[name], seed=s) for s in range(40)]
    assert outputs == [render(name, EXAMPLES[name], seed=s) for s in range(40)]
    assert len(set(outputs)) >= 4, f"{name} barely varies across seeds"


def test_textbook_mcq_layout():
    mcq = TEXTBOOK_EXAMPLE["multiple_choice_question"]
    seen_answer_leads = set()
    for seed in range(60):
        text = render("textbook_mcq", TEXTBOOK_EXAMPLE, seed)
        assert text.startswith(TEXTBOOK_EXAMPLE["passages"][0]["passage"])
        for p in TEXTBOOK_EXAMPLE["passages"]:
            assert p["passage"] in text
        assert mcq["question"] in text and all(o in text for o in mcq["options"])
        answer_lines = [line for line in text.splitlines() if line.endswith(mcq["answer_label"])
                        and any(line.startswith(lead + " ") for lead in ANSWER_LEADS)]
        assert len(answer_lines) == 1, text
        seen_answer_leads.add(next(lead for lead in ANSWER_LEADS if answer_lines[0].startswith(lead + " ")))
        assert text.rstrip().endswith(mcq["step_by_step_answer_explanation"])
    assert len(seen_answer_leads) >= 4


def test_textbook_mcq_answer_names_the_marker():
    # with "A." markers the answer line must say "A. <text>" for the first option
    for seed in range(200):
        text = render("textbook_mcq", TEXTBOOK_EXAMPLE, seed)
        if "\nA. Air from the time" in text:
            assert re.search(r"(Key:|A:|Answer:|The answer is:|Selected answer:|The correct choice is:)"
                             r" A\. Air from the time", text)
            return
    pytest.fail("no seed in 0..199 used the A. enumeration")


def test_math_renderers_keep_every_part_in_order():
    """Each part appears once, in the layout's order; markers the model wrote are not doubled."""
    for name, parts in (("math_solution", ["problem", "steps", "answer"]),
                        ("math_mistake", ["problem", "wrong_solution", "why_wrong", "steps", "answer"]),
                        ("math_explanation", ["fact", "steps", "example"])):
        data = EXAMPLES[name]
        for seed in range(40):
            text = render(name, data, seed)
            pieces = []
            for key in parts:
                value = data[key]
                if key == "steps":
                    pieces += [re.sub(r"^(Step 1: |2\. )", "", v) for v in value]
                else:
                    pieces.append(value.rstrip(".") if key == "answer" else value)
            at = 0
            for piece in pieces:  # each piece after the one before it
                at = text.find(piece, at)
                assert at >= 0, (name, seed, piece, text)
                at += len(piece)
            assert "Step 1: Step 1:" not in text and "2. 2." not in text and "1. 2." not in text
    finals = {render("math_solution", EXAMPLES["math_solution"], s).splitlines()[-1] for s in range(60)}
    assert finals == {"Answer: 27", "The answer is 27.", "#### 27", "Final answer: 27", "So the answer is 27."}
    dialogue = EXAMPLES["math_dialogue"]
    for seed in range(20):
        lines = [ln for ln in render("math_dialogue", dialogue, seed).splitlines() if ln]
        tutor = lines[0].split(" ", 1)[0]
        assert lines[0] == f"{tutor} {dialogue['problem']}" and len(lines) == 2 + 2 * len(dialogue["turns"])
        assert lines[2].startswith(tutor) and lines[-2] == f"{tutor} Right." and "5/8" in lines[-1]


def test_renderer_errors():
    with pytest.raises(KeyError, match="unknown renderer"):
        render("nope", {}, 0)
    with pytest.raises(ValueError):
        render("textbook_mcq", {"passages": []}, 0)
    with pytest.raises(ValueError):
        render("sft_pair", {"instruction": "hi"}, 0)
    with pytest.raises(ValueError):
        render("sft_chat", {"turns": [{"user": "hi"}]}, 0)
    with pytest.raises(ValueError, match="'steps' must be a non-empty list"):
        render("math_solution", {"problem": "p", "steps": [], "answer": "1"}, 0)
    with pytest.raises(ValueError, match="field 'answer'"):
        render("math_mistake", {**EXAMPLES["math_mistake"], "answer": " "}, 0)
    with pytest.raises(ValueError, match="turns\\[0\\]"):
        render("math_dialogue", {"problem": "p", "turns": [{"student": "s"}], "answer": "1"}, 0)
    with pytest.raises(ValueError, match="field 'example'"):
        render("math_explanation", {"fact": "f", "steps": ["s"]}, 0)


# --------------------------------------------------------------------------- personas

def test_persona_records(personas):
    assert len(personas) >= 1000
    ids = [p["id"] for p in personas]
    assert len(set(ids)) == len(ids)
    for p in personas:
        assert set(p) >= {"id", "description", "occupation", "age_band", "region", "expertise", "interests"}
        assert re.fullmatch(r"p\d{4,}", p["id"])
        assert isinstance(p["description"], str) and 40 < len(p["description"]) < 400
        assert "\n" not in p["description"]
        assert p["age_band"] in AGE_BANDS and p["expertise"] in EXPERTISE
        assert isinstance(p["interests"], list) and 2 <= len(p["interests"]) <= 4
        assert all(isinstance(i, str) and i for i in p["interests"])
        assert p["occupation"] and p["region"]
    assert len({p["occupation"] for p in personas}) >= 200
    assert len({p["region"] for p in personas}) >= 50
    assert {p["age_band"] for p in personas} == AGE_BANDS
    assert {p["expertise"] for p in personas} == EXPERTISE
    assert len({p["description"] for p in personas}) == len(personas)


def test_personas_file_is_reproducible():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_personas", ROOT / "personas" / "build_personas.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.dumps(mod.build()) == PERSONAS.read_text(encoding="utf-8"), \
        "personas/core.jsonl is out of date: run python personas/build_personas.py"


def test_personas_have_no_near_duplicates(personas):
    sim, i, j = _jaccard_max([_shingles(p["description"]) for p in personas])
    assert sim < PERSONA_DUP_THRESHOLD, (
        f"near-duplicate personas ({sim:.2f}): {personas[i]['id']} / {personas[j]['id']}")


# --------------------------------------------------------------------------- topics

def test_topic_trees_load_and_leaves_are_complete(trees):
    math_leaves = list(_leaves(trees["math"].roots))
    general_leaves = list(_leaves(trees["general"].roots))
    assert len(math_leaves) >= 300
    assert len(general_leaves) >= 1000
    for tree, leaves in (("math", math_leaves), ("general", general_leaves)):
        names = [n.name for n in leaves]
        dup = [k for k, v in Counter(names).items() if v > 1]
        assert not dup, f"{tree}: leaf names repeat: {dup[:5]}"
        for n in leaves:
            assert 3 <= len(n.keywords) <= 8, f"{tree}: {' / '.join(n.path)} has {len(n.keywords)} keywords"
            assert len(set(k.lower() for k in n.keywords)) == len(n.keywords), n.path
            assert not re.search(r"\b(topic|subtopic|item|leaf)\s*\d+\b", n.name, re.I), n.path
    for n in math_leaves:
        assert n.level and LEVEL_RE.match(n.level), f"math leaf {n.name} has level {n.level!r}"
    levels = {n.level for n in math_leaves}
    assert {"kindergarten", "grade 1", "grade 6", "grade 12", "college"} <= levels
    depths = Counter(len(n.path) for n in general_leaves)
    assert set(depths) <= {2, 3, 4}
    assert len(trees["general"].roots) >= 10


def test_topic_leaves_have_no_near_duplicates(trees):
    for name, tree in trees.items():
        leaves = list(_leaves(tree.roots))
        sim, i, j = _jaccard_max([_leaf_words(n.name, n.keywords) for n in leaves])
        assert sim < LEAF_DUP_THRESHOLD, (
            f"{name}: near-duplicate leaves ({sim:.2f}): {leaves[i].path} / {leaves[j].path}")


def test_textbook_mcq_tolerates_stray_markers_and_letter_labels():
    data = json.loads(json.dumps(TEXTBOOK_EXAMPLE))
    mcq = data["multiple_choice_question"]
    mcq["options"] = [f"{m}) {o}" for m, o in zip("ABCD", mcq["options"])]
    mcq["answer_label"] = "A"
    for seed in range(20):
        text = render("textbook_mcq", data, seed)
        assert "A) A)" not in text and "1. A)" not in text
        assert any(line.endswith("Air from the time the snow was buried")
                   and any(line.startswith(lead + " ") for lead in ANSWER_LEADS)
                   for line in text.splitlines())


def test_every_template_group_ships_in_wheels():
    """pyproject.toml lists each templates/ subfolder as a package; a new group must be added there."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    packages = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    groups = {p.name for p in (root / "templates").iterdir() if p.is_dir() and any(p.glob("*.j2"))}
    assert {f"synthgen_library.templates.{g}" for g in groups} <= packages
