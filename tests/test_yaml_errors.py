"""Every error a person can act on, through the real CLI: `synthgen validate` (and `synthgen mix`)
in a subprocess, exit code 2, one stderr line `error: FILE:LINE:COL: cause; fix`, pointing where
the problem starts (the tab, the opening quote or bracket, the mis-indented line, the key as
written, the source that holds no data).

The cases run concurrently in one fixture (each is its own interpreter) and are asserted one by one;
the hostile inputs run one at a time, since their wall time is asserted.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = "name: h\ntopics:\n  - items: [alpha, beta]\ntemplates:\n  - template: t\n"
TEMPLATE = "Write about {{ topic }}.\n"


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]
    where: str            # FILE:LINE:COL (or FILE:LINE) the message must start with
    fix: str              # text of the fix, which must come after the cause (after a '; ')
    cause: str = ""       # text of the cause, when worth pinning
    argv: list[str] = field(default_factory=lambda: ["validate", "spec.yaml"])


def spec(extra: str = "", **files) -> dict:
    return {"spec.yaml": SPEC + extra, "templates/t.j2": TEMPLATE, **files}


SYNTAX = [
    # a tab: at the tab, whatever the parser calls it
    Case("tab-indents-list", {"spec.yaml": "name: h\ntopics:\n\t- items: [a]\n"}, "spec.yaml:3:1",
         "replace the tab with spaces", "a tab character"),
    Case("tab-indents-key", {"spec.yaml": "name: h\n\tseed: 1\n"}, "spec.yaml:2:1", "replace the tab with spaces"),
    Case("tab-after-dash", {"spec.yaml": "name: h\ntopics:\n  -\titems: [a]\n"}, "spec.yaml:3:4",
         "replace the tab with spaces"),
    Case("tab-after-spaces", {"spec.yaml": "name: h\nsampling:\n  \ttop_p: 1\n"}, "spec.yaml:3:3",
         "replace the tab with spaces"),
    # an unclosed quote: where it opens, not at the end of the file or at the next quote
    Case("dquote-to-eof", {"spec.yaml": 'name: "h\nseed: 1\n'}, "spec.yaml:1:7", 'add the closing "', "never closed"),
    Case("squote-to-eof", {"spec.yaml": "name: h\ndescription: 'a b\nseed: 1\n"}, "spec.yaml:2:14",
         "add the closing '"),
    Case("dquote-runs-into-next", {"spec.yaml": 'name: h\ndescription: "a\nseed: "1"\n'}, "spec.yaml:2:14",
         'add the closing "', "not closed on its line"),
    Case("squote-in-list-item", {"spec.yaml": "name: h\ntemplates:\n  - template: 'a\n  - template: 'b'\nseed: 1\n"},
         "spec.yaml:3:15", "add the closing '"),
    Case("squote-in-flow", {"spec.yaml": "name: h\ntopics:\n  - items: ['a, b]\n"}, "spec.yaml:3:13",
         "add the closing '"),
    Case("quote-in-block-scalar-is-text", {"spec.yaml": 'name: h\ndescription: |\n  "quoted start\n  more\n'
                                                        'vars:\n  a: 1\n    b: 2\n'},
         "spec.yaml:7:5", "indent it like line 6", "indented deeper than line 6"),
    # an unclosed bracket or brace: where it opens
    Case("bracket-to-eof", {"spec.yaml": "name: h\ntopics: [a, b\n\n"}, "spec.yaml:2:9", "add the closing ]"),
    Case("brace-before-key", {"spec.yaml": "name: h\nvars: {a: 1\nseed: 2\n"}, "spec.yaml:2:7", "add the closing }"),
    Case("inner-bracket", {"spec.yaml": "name: h\ntopics:\n  - items: [a, [b, c]\nseed: 1\n"}, "spec.yaml:3:12",
         "add the closing ]"),
    Case("bracket-closed-by-brace", {"spec.yaml": "name: h\nvars: {a: [1, 2}\n"}, "spec.yaml:2:11",
         "close it with ]"),
    Case("extra-closing-bracket", {"spec.yaml": "name: h\ntopics: [a, b]]\n"}, "spec.yaml:2:15",
         "remove it or add the matching opening bracket"),
    # indentation: at the first character of the line that is off
    Case("deeper-than-scalar", {"spec.yaml": "name: h\n  seed: 1\n"}, "spec.yaml:2:3", "indent it like line 1",
         "indented deeper than line 1"),
    Case("deeper-than-sibling", {"spec.yaml": "sampling:\n  top_p: 1\n    temperature: 0.5\n"}, "spec.yaml:3:5",
         "indent it like line 2"),
    Case("between-levels", {"spec.yaml": "sampling:\n    top_p: 1\n  temperature: 0.5\n"}, "spec.yaml:3:3",
         "indent it exactly like the keys"),
    Case("key-inside-list", {"spec.yaml": "topics:\n  - items: [a]\n  seed: 1\n"}, "spec.yaml:3:3",
         "start this line with '- '"),
    Case("dash-misaligned", {"spec.yaml": "templates:\n  - template: a\n - template: b\n"}, "spec.yaml:3:2",
         "line up the '- ' of one list"),
    Case("dash-in-mapping", {"spec.yaml": "name: h\n- seed\n"}, "spec.yaml:2:1", "put it under a key"),
    Case("line-without-colon", {"spec.yaml": "name: h\nseed\ntopics: 1\n"}, "spec.yaml:2:1",
         "write it as `key: value`"),
    Case("deeper-than-commented-value", {"spec.yaml": "name: h # the run\n  seed: 1\n"}, "spec.yaml:2:3",
         "indent it like line 1", "indented deeper than line 1"),
    Case("deeper-than-flow-value", {"spec.yaml": "name: h\ntopics: [a]\n  seed: 1\n"}, "spec.yaml:3:3",
         "indent it like line 2"),
    Case("between-dash-and-keys", {"spec.yaml": "topics:\n  - items: [a]\n    weight: 1\n   seed: 1\n"},
         "spec.yaml:4:4", "indent it exactly like the keys"),
    # other classes
    Case("text-after-quote", {"spec.yaml": "name: h\ndescription: 'a' b\n"}, "spec.yaml:2:18",
         "put the whole value in quotes", "after a closing quote"),
    Case("undefined-alias", {"spec.yaml": "name: h\nseed: *s\n"}, "spec.yaml:2:7", "define &s on a value above it",
         "the alias *s refers to no anchor"),
    Case("colon-in-value", {"spec.yaml": "name: h\ndescription: Note: a b\n"}, "spec.yaml:2:18",
         'put the value in quotes (key: "a: b")'),
    Case("bad-escape", {"spec.yaml": 'name: h\nvars: {p: "C:\\dir"}\n'}, "spec.yaml:2:",
         "write \\\\ for a backslash, or use single quotes"),
    Case("second-document", {"spec.yaml": "name: h\n---\nname: i\n"}, "spec.yaml:2:1", "keep one document per file"),
    # the same translation for every YAML file a spec pulls in, and for mix files
    Case("template-front-matter", spec(**{"templates/t.j2": '---\npurpose: "general\ndescription: x\n---\nHi\n'}),
         "t.j2:2:10", 'add the closing "'),
    Case("topic-tree", {"spec.yaml": "name: h\ntopics:\n  - tree: ./tree.yaml\ntemplates:\n  - template: t\n",
                        "templates/t.j2": TEMPLATE,
                        "tree.yaml": "name: t\ndescription: d\nnodes:\n  - name: a\n\t  keywords: [x]\n"},
         "tree.yaml:5:1", "replace the tab with spaces"),
    Case("mix-file", {"mix.yaml": "real:\n  - path: 'data.jsonl\nratio: \"1:0\"\n"}, "mix.yaml:2:11",
         "add the closing '", argv=["validate", "mix.yaml"]),
    Case("mix-command", {"mix.yaml": "real:\n  - path: [data.jsonl\nratio: \"1:0\"\n"}, "mix.yaml:2:11",
         "add the closing ]", argv=["mix", "mix.yaml", "--out", "o"]),
]

KEYS = [
    Case("spec-top-level", {"spec.yaml": "Name: h\n"}, "spec.yaml:1:1", "check the spelling", "unknown key 'Name'"),
    Case("spec-nested", spec("sampling:\n  Temperature: 0.5\n"), "spec.yaml:7:3", "check the spelling",
         "unknown key 'Temperature'"),
    Case("spec-topic-item", {"spec.yaml": "name: h\ntopics:\n  - items: [a]\n    Weight: 2\ntemplates:\n"
                                          "  - template: t\n", "templates/t.j2": TEMPLATE},
         "spec.yaml:4:5", "check the spelling", "unknown key 'Weight'"),
    Case("spec-stage", {"spec.yaml": "name: h\ntopics:\n  - items: [a]\nstages:\n  - name: a\n    kind: generate\n"
                                     "    template: t\n    Model: m\n", "templates/t.j2": TEMPLATE},
         "spec.yaml:8:5", "check the spelling", "unknown key 'Model'"),
    Case("spec-mix-section", spec("mix:\n  Ratio: \"1:0\"\n"), "spec.yaml:7:3", "docs/mix.md lists the keys",
         "unknown key 'Ratio'"),
    Case("mix-top-level", {"mix.yaml": "ratio: \"1:0\"\nreal:\n  - path: d.jsonl\nShard_Tokens: 5\n", "d.jsonl": "{}\n"},
         "mix.yaml:4:1", "docs/mix.md lists the keys", "unknown key 'Shard_Tokens'", argv=["validate", "mix.yaml"]),
    Case("mix-source", {"mix.yaml": "ratio: \"1:0\"\nreal:\n  - Path: d.jsonl\n"}, "mix.yaml:3:5",
         "docs/mix.md lists the keys", "unknown key 'Path'", argv=["validate", "mix.yaml"]),
]


def _parquet(rows: int, column: str = "text") -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({column: pa.array(["a b c"] * rows, pa.string())}), buf)
    return buf.getvalue()


def _mix(body: str, **files) -> dict:
    return {"mix.yaml": body, **files}


MIX_ARGV = ["validate", "mix.yaml"]
SOURCES = [
    Case("real-missing", _mix("ratio: \"1:0\"\nreal:\n  - path: nope.jsonl\n"), "mix.yaml:3:5", "fix the path",
         "does not exist", MIX_ARGV),
    Case("real-empty-file", _mix("ratio: \"1:0\"\nreal:\n  - path: d.jsonl\n", **{"d.jsonl": ""}), "mix.yaml:3:5",
         "point path at a file with data", "is empty", MIX_ARGV),
    Case("real-blank-lines", _mix("ratio: \"1:0\"\nreal:\n  - path: d.jsonl\n", **{"d.jsonl": "\n\n"}),
         "mix.yaml:3:5", "point the source at a file with data", "no rows", MIX_ARGV),
    Case("real-empty-folder", _mix("ratio: \"1:0\"\nreal:\n  - path: data/\n", **{"data/notes.txt": "x"}),
         "mix.yaml:3:5", "point path at a folder with data files", "holds no non-empty", MIX_ARGV),
    Case("real-parquet-no-rows", _mix("ratio: \"1:0\"\nreal:\n  - path: d.parquet\n", **{"d.parquet": _parquet(0)}),
         "mix.yaml:3:5", "point the source at a file with data", "has no rows", MIX_ARGV),
    Case("real-wrong-suffix", _mix("ratio: \"1:0\"\nreal:\n  - path: d.csv\n", **{"d.csv": "a\n"}),
         "mix.yaml:3:5", "point path at a data file or a folder of them", "is not a", MIX_ARGV),
    Case("real-missing-field", _mix("ratio: \"1:0\"\nreal:\n  - path: d.parquet\n    text_field: body\n",
                                    **{"d.parquet": _parquet(2)}),
         "mix.yaml:4:5", "set text_field to one of its fields", "no field 'body' (fields: text)", MIX_ARGV),
    Case("real-jsonl-missing-field", _mix("ratio: \"1:0\"\nreal:\n  - path: d.jsonl\n",
                                          **{"d.jsonl": '{"question": "q"}\n'}),
         "mix.yaml:3:5", "set text_field to one of its fields", "no field 'text'", MIX_ARGV),
    Case("synthetic-missing", _mix("ratio: \"0:1\"\nsynthetic:\n  - run: runs/none\n"), "mix.yaml:3:5",
         "point run at a synthgen run folder", "does not exist", MIX_ARGV),
    Case("synthetic-no-shards", _mix("ratio: \"0:1\"\nsynthetic:\n  - run: runs/r\n", **{"runs/r/plan.txt": "x"}),
         "mix.yaml:3:5", "run `synthgen run SPEC` into it first", "no generations/part-*.parquet", MIX_ARGV),
    Case("several-problems", _mix("ratio: \"1:1\"\nreal:\n  - path: a.jsonl\nsynthetic:\n  - run: runs/none\n"),
         "mix.yaml:3:5", "fix the path", "first of 2 source problems", MIX_ARGV),
    Case("tokenizer-missing", _mix("ratio: \"1:0\"\nreal:\n  - path: d.jsonl\ntokenizer: tok/\n",
                                   **{"d.jsonl": '{"text": "a"}\n'}),
         "mix.yaml:4:1", "fix the path or name a model alias", "", MIX_ARGV),
    Case("ratio-without-its-side", _mix("ratio: \"4:1\"\nreal:\n  - path: d.jsonl\n", **{"d.jsonl": '{"text": "a"}\n'}),
         "mix.yaml:1:1", "add a synthetic: source", "", MIX_ARGV),
    Case("ratio-malformed", _mix("ratio: \"4-1\"\nreal:\n  - path: d.jsonl\n", **{"d.jsonl": '{"text": "a"}\n'}),
         "mix.yaml:1:1", 'write it like "4:1"', "", MIX_ARGV),
    Case("spec-mix-section", spec("mix:\n  ratio: \"1:0\"\n  real:\n    - path: nope/\n"), "spec.yaml:9:7",
         "fix the path", "does not exist"),
    # `synthgen mix` checks the same, before the tokenizer loads or a row is read
    Case("mix-command-missing", _mix("ratio: \"1:0\"\nreal:\n  - path: nope.jsonl\n"), "mix.yaml:3:5",
         "fix the path", "does not exist", ["mix", "mix.yaml", "--out", "o"]),
    Case("mix-command-no-shards", _mix("ratio: \"0:1\"\nsynthetic:\n  - run: runs/r\n", **{"runs/r/x": "x"}),
         "mix.yaml:3:5", "run `synthgen run SPEC` into it first", "", ["mix", "mix.yaml", "--out", "o"]),
]

# Inputs built to be slow (docs/security.md limits): each must fail fast, on one line, exit 2.
HOSTILE = [
    Case("huge-file", {"spec.yaml": "name: h\ndescription: '" + "a" * (2 << 20) + "'\n"}, "spec.yaml",
         "raise SYNTHGEN_MAX_YAML_BYTES", "larger than the limit"),
    Case("deep-flow-nesting", {"spec.yaml": "name: h\nvars: " + "[" * 20000 + "]" * 20000 + "\n"}, "spec.yaml:2:",
         "flatten the structure", "nesting deeper"),
    Case("deep-block-nesting", {"spec.yaml": "".join(" " * i + f"k{i}:\n" for i in range(400))}, "spec.yaml",
         "flatten the structure", "nesting deeper"),
    Case("many-aliases", {"spec.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))}, "spec.yaml", "use fewer aliases", "expands to more than"),
    Case("long-line", {"spec.yaml": "name: h\ndescription: " + "x" * 900_000 + "\n"}, "spec.yaml:1:1",
         "add it", "missing required key 'topics'"),
    Case("long-line-broken", {"spec.yaml": "name: h\nvars: {a: '" + "x" * 900_000 + "\n"}, "spec.yaml:2:",
         "add the closing '"),
]


def _run_case(base: Path, case: Case) -> tuple[Case, int, str, str, float]:
    proj = base / case.id
    for rel, data in case.files.items():
        path = proj / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    env = {k: v for k, v in os.environ.items() if k != "SYNTHGEN_DEBUG"} | {"PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "generator.cli", *case.argv], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=120)
    return case, res.returncode, res.stdout, res.stderr, time.perf_counter() - t0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("yaml_errors")
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(lambda c: _run_case(base, c), SYNTAX + KEYS + SOURCES))
    done += [_run_case(base, c) for c in HOSTILE]  # one at a time: their wall time is asserted
    return {id(c): rest for c, *rest in done}


def _check(results, case: Case) -> str:
    rc, out, err, seconds = results[id(case)]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert out == "", out
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in line, line
    # error: [folder/]FILE:LINE:COL: ... (the position follows the file name, exactly)
    end = "" if case.where.endswith(":") else ":"
    assert re.match(r"error: (\S*/)?" + re.escape(case.where) + end, line), (case.where, line)
    assert case.cause in line, (case.cause, line)
    if case.fix:
        assert line.rindex(case.fix) > line.index("; "), ("the fix must follow the cause", line)
    return line


@pytest.mark.parametrize("case", SYNTAX, ids=[c.id for c in SYNTAX])
def test_yaml_syntax_errors_name_the_cause_where_it_starts(results, case):
    line = _check(results, case)
    assert "invalid YAML: " in line


@pytest.mark.parametrize("case", KEYS, ids=[c.id for c in KEYS])
def test_unknown_keys_are_quoted_as_written(results, case):
    _check(results, case)


@pytest.mark.parametrize("case", SOURCES, ids=[c.id for c in SOURCES])
def test_mix_sources_are_checked_before_any_data_is_read(results, case):
    _check(results, case)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_inputs_fail_fast(results, case):
    _check(results, case)
    seconds = results[id(case)][3]
    assert seconds < 10, seconds  # generous for a shared machine; bench/validate_hostile.md has the timings


def test_a_spec_mix_section_may_name_the_run_it_writes(tmp_path):
    """The spec's own run folder is written by `synthgen run`: validate notes it, and passes."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.j2").write_text(TEMPLATE)
    (tmp_path / "d.jsonl").write_text('{"text": "a b"}\n')
    (tmp_path / "spec.yaml").write_text(SPEC + "output: runs/h\nmix:\n  ratio: \"1:1\"\n  real:\n    - path: d.jsonl\n"
                                        "  synthetic:\n    - run: runs/h\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "generator.cli", "validate", "spec.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "runs/h does not exist yet; `synthgen run` writes it" in res.stderr
    assert res.stdout.startswith("ok spec.yaml:")


def test_a_good_mix_file_validates(tmp_path):
    (tmp_path / "d.parquet").write_bytes(_parquet(3))
    (tmp_path / "mix.yaml").write_text("ratio: \"1:0\"\nreal:\n  - path: d.parquet\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "generator.cli", "validate", "mix.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok mix.yaml: mix of 1 real and 0 synthetic source(s), ratio 1:0"
