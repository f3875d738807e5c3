"""Property tests: arbitrary damage to the shipped specs gives a clean error, never a traceback."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generator.config.spec import load_spec
from generator.core.errors import SynthgenError
from generator.core.yaml_loader import load_yaml
from generator.engine.planner import expand, limit_records, plan_spec, resolve_spec, validate

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
TEXTS = {p.name: p.read_bytes() for p in SPECS}
TOKENS = [b"&a ", b"*a", b"<<: *a", b"!!python/object:os.system ", b"!x ", b"{", b"}", b"[", b"]", b":", b"- ",
          b"\t", b"\x00", b"\xe9", b"\xff\xfe", b"'", b'"', b"#", b"---\n", b"? ", b"|", b">", b"%YAML 1.1\n",
          b"0", b"-1", b".nan", b"1e309", b"null", b"~", b"../../../etc/passwd", b"/proc/self/environ",
          b"{% include '/etc/passwd' %}", b"99999999999", b"\n", b"  "]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(TEXTS[draw(st.sampled_from(sorted(TEXTS)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "dup_line"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        elif op == "replace":
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif op == "truncate":
            del data[at:]
        else:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, max(len(lines) - 1, 0)))
            lines.insert(i, lines[i] if lines else b"")
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def _specs_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mut") / "specs"
    d.mkdir()
    return d


@given(data=mutated())
@SETTINGS
def test_mutated_specs_fail_cleanly(data, tmp_path_factory):
    path = _specs_dir(tmp_path_factory) / "m.yaml"
    path.write_bytes(data)
    try:
        spec = load_spec(path)
        spec.run.max_records = min(spec.run.max_records, 5000)
        plan_spec(spec, limit=2)
    except SynthgenError as exc:
        assert "\n" not in str(exc).strip()


@given(text=st.text(max_size=300))
@SETTINGS
def test_yaml_loader_never_raises_anything_else(text, tmp_path_factory):
    try:
        load_yaml(Path("x.yaml"), text)
    except SynthgenError:
        pass


KEYS = ["seed", "name", "topics", "topics.0", "topics.0.tree", "topics.0.sample", "topics.0.weight", "templates.0",
        "templates.0.template", "templates.0.weight", "generations_per_topic", "personas", "personas.sample",
        "personas.file", "models.0.share", "sampling.max_tokens", "run.max_records", "vars", "vars.x", "allow_paths",
        "topics.9.tree", "seed.x", "models.0.api_key_env", "models.0.base_url"]
VALUES = ["0", "-1", "3", "1e12", "x", "[]", "{}", "null", "/etc/passwd", "../../x", "[/etc]", ".nan", "'a: b'",
          "!!python/object:os.system x", "sk-live-9aB3xQ7rT2mK8vL4pZ6wN1cD", "http://u:p@h/v1", "[1, [2, [3]]]"]


@given(sets=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), min_size=1, max_size=3),
       name=st.sampled_from(sorted(TEXTS)))
@SETTINGS
def test_arbitrary_overrides_fail_cleanly(sets, name):
    try:
        spec = load_spec(ROOT / "specs" / name, sets)
        spec.run.max_records = min(spec.run.max_records, 5000)
        plan_spec(spec, limit=2)
    except SynthgenError as exc:
        assert "sk-live-9aB3xQ7rT2mK8vL4pZ6wN1cD" not in str(exc)


@given(limit=st.integers(0, 40), gens=st.integers(1, 4), seed=st.integers(0, 50))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_render_limit_builds_exactly_the_first_records_of_the_plan(limit, gens, seed):
    """`render -n` builds only what it prints, and what it prints is the plan's first records."""
    spec = load_spec(ROOT / "specs" / "tiny.yaml", {"generations_per_topic": str(gens), "seed": str(seed)})
    resolved = resolve_spec(spec)
    validate(resolved)
    _, lazy = plan_spec(spec, limit=limit)
    full = limit_records(expand(resolved), limit)
    assert [r.to_row() for r in lazy] == [r.to_row() for r in full]


def test_a_huge_plan_renders_its_first_record_at_once():
    import time

    spec = load_spec(ROOT / "specs" / "tiny.yaml", {"generations_per_topic": "100000000000",
                                                    "run.max_records": "1000000000000"})
    t0 = time.perf_counter()
    _, records = plan_spec(spec, limit=1)
    assert len(records) == 1 and time.perf_counter() - t0 < 2


def test_random_bytes_never_traceback(tmp_path):
    rng = random.Random(0)
    for i in range(100):
        p = tmp_path / f"r{i}.yaml"
        p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        with pytest.raises(SynthgenError):
            spec = load_spec(p)
            plan_spec(spec, limit=1)
