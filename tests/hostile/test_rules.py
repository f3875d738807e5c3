"""The rules behind the corpus: merges, limits, locks, secrets, exact output, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator.cli.main import main
from generator.config.spec import load_spec
from generator.core.errors import SpecError
from generator.core.redact import looks_like_key, scrub, scrub_text, scrub_url
from generator.core.yaml_loader import MAX_YAML_BYTES, load_yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-live-9aB3xQ7rT2mK8vL4pZ6wN1cD"


def test_merge_keys_override_instead_of_duplicating():
    doc = load_yaml(Path("m.yaml"), "base: &b {x: 1, y: 2}\nmore: &m {y: 3, z: 4}\n"
                                     "d:\n  <<: [*b, *m]\n  x: 5\n")
    assert doc.data["d"] == {"x": 5, "y": 2, "z": 4}  # written keys win; the first merged mapping wins
    assert doc.where(("d", "x")) == (5, 3)


def test_aliases_are_shared_not_re_expanded(tmp_path):
    text = "a: &a [" + ", ".join(["x"] * 1000) + "]\n" + "".join(f"k{i}: *a\n" for i in range(400))
    t0 = time.perf_counter()
    doc = load_yaml(tmp_path / "a.yaml", text)
    assert len(doc.data) == 401 and time.perf_counter() - t0 < 2


def test_a_yaml_file_over_the_size_limit_is_refused_without_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\ndescription: '" + "a" * MAX_YAML_BYTES + "'\n")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"big\.yaml: YAML file is larger than the limit of 1 MiB; split it "
                                        r"or raise SYNTHGEN_MAX_YAML_BYTES"):
        load_yaml(big)
    assert time.perf_counter() - t0 < 2


def test_secrets_are_recognised_and_scrubbed():
    assert looks_like_key(SECRET) and looks_like_key("hf_abcdefghijklmnopqrstuvwxyz012345")
    assert looks_like_key("my key") and looks_like_key("Bearer abc")
    assert not looks_like_key("OPENAI_API_KEY") and not looks_like_key("my_server_key")
    url = f"https://admin:{SECRET}@example.org:8443/v1?api_key={SECRET}&model=m"
    clean = scrub_url(url)
    assert SECRET not in clean and "admin" not in clean and "example.org:8443/v1" in clean and "model=m" in clean
    assert SECRET not in scrub_text(f"failed to reach {url} after 3 tries")
    assert SECRET not in json.dumps(scrub({"models": [{"base_url": url}], "n": 3}))


def test_manifest_never_holds_url_credentials(tmp_path):
    from generator.engine.planner import resolve_spec
    from generator.engine.run_folder import RunFolder
    from generator.engine.runner import run_manifest

    spec = load_spec(ROOT / "specs" / "tiny.yaml", {
        "models": f"[{{name: m, backend: openai, base_url: 'http://u:{SECRET}@127.0.0.1:9/v1?token={SECRET}'}}]"})
    folder = RunFolder(tmp_path / "run")
    folder.create()
    folder.write_manifest(run_manifest(folder, spec, resolve_spec(spec), None))
    text = folder.manifest_path.read_text()
    assert SECRET not in text and "127.0.0.1:9/v1" in text


def test_ray_workers_get_only_allow_listed_variables():
    from generator.engine.executors.ray import forwarded_env

    env = {"HF_TOKEN": "t", "HF_HOME": "/h", "SYNTHGEN_API_KEY": "k", "VLLM_SECRET_X": "s", "HF_PASSWORD": "p",
           "VLLM_LOGGING_LEVEL": "ERROR", "AWS_SECRET_ACCESS_KEY": "a", "PATH": "/bin"}
    assert set(forwarded_env(env)) == {"HF_HOME", "VLLM_LOGGING_LEVEL"}
    named = forwarded_env({**env, "SYNTHGEN_RAY_FORWARD_ENV": "HF_TOKEN"})
    assert set(named) == {"HF_HOME", "VLLM_LOGGING_LEVEL", "HF_TOKEN", "SYNTHGEN_RAY_FORWARD_ENV"}


def _project(tmp_path: Path, template: str) -> Path:
    proj = tmp_path / "p"
    (proj / "templates").mkdir(parents=True)
    (proj / "templates" / "t.j2").write_text(template)
    (proj / "spec.yaml").write_text("name: p\ntopics:\n  - items: ['[bold]x[/bold] :x:']\ntemplates:\n"
                                    "  - template: t\n")
    return proj


def test_render_prints_user_text_exactly(tmp_path, monkeypatch):
    proj = _project(tmp_path, "Say :smile: and [red]{{ topic }}[/red] \\[x] <b>&amp;\n")
    monkeypatch.chdir(proj)
    res = CliRunner().invoke(main, ["render", "spec.yaml", "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "Say :smile: and [red][bold]x[/bold] :x:[/red] \\[x] <b>&amp;" in res.stdout
    res = CliRunner().invoke(main, ["render", "spec.yaml", "-n", "1", "--json"])
    assert json.loads(res.stdout)["prompt"] == "Say :smile: and [red][bold]x[/bold] :x:[/red] \\[x] <b>&amp;"


def test_include_extends_import_work_inside_the_project(tmp_path, monkeypatch):
    proj = _project(tmp_path, "{% extends 'base.j2' %}{% block body %}{% import 'macros.j2' as m %}"
                              "{{ m.shout(topic) }} {% include 'partials/tail.j2' %}{% endblock %}\n")
    (proj / "templates" / "base.j2").write_text("---\nname: base\n---\nBEGIN {% block body %}{% endblock %} END\n")
    (proj / "templates" / "macros.j2").write_text("{% macro shout(x) %}{{ x|upper }}!{% endmacro %}\n")
    (proj / "templates" / "partials").mkdir()
    (proj / "templates" / "partials" / "tail.j2").write_text("tail\n")
    monkeypatch.chdir(proj)
    res = CliRunner().invoke(main, ["render", "spec.yaml", "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "BEGIN [BOLD]X[/BOLD] :X:! tail\n END" in res.stdout or "BEGIN [BOLD]X[/BOLD] :X:! tail END" in res.stdout


def test_allow_path_admits_a_folder_outside_the_project(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ext.j2").write_text("External {{ topic }}\n")
    proj = _project(tmp_path, "x {{ topic }}\n")
    (proj / "spec.yaml").write_text(f"name: p\ntopics:\n  - items: [a]\ntemplates:\n  - template: {shared}/ext.j2\n")
    monkeypatch.chdir(proj)
    res = CliRunner().invoke(main, ["validate", "spec.yaml"])
    assert res.exit_code == 2 and "outside the project" in res.stderr
    res = CliRunner().invoke(main, ["render", "spec.yaml", "-n", "1", "--allow-path", str(shared)])
    assert res.exit_code == 0 and "External a" in res.stdout, res.output
    (proj / "spec.yaml").write_text(f"name: p\nallow_paths: [../shared]\ntopics:\n  - items: [a]\ntemplates:\n"
                                    f"  - template: {shared}/ext.j2\n")
    res = CliRunner().invoke(main, ["validate", "spec.yaml"])
    assert res.exit_code == 0, res.output


def test_tables_are_plain_and_whole_when_piped():
    res = CliRunner().invoke(main, ["library"], terminal_width=30)
    assert res.exit_code == 0, res.output
    assert "━" not in res.stdout and "│" not in res.stdout
    header = next(line for line in res.stdout.splitlines() if line.startswith("name"))
    assert header.split()[:4] == ["name", "purpose", "output", "renderer"]
    assert "math/word_problem" in res.stdout


def test_unexpected_exceptions_are_one_line_and_debug_shows_the_traceback(monkeypatch):
    import generator.engine.planner as planner

    def boom(resolved):
        raise RuntimeError("boom at http://user:" + SECRET + "@host/x")

    monkeypatch.setattr(planner, "validate", boom)
    spec = str(ROOT / "specs" / "tiny.yaml")
    res = CliRunner().invoke(main, ["validate", spec])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("error: RuntimeError: boom at http://REDACTED@host/x; rerun with --debug")
    res = CliRunner().invoke(main, ["--debug", "validate", spec])
    assert res.exit_code == 2 and "Traceback" in res.stderr and res.stderr.strip().endswith("--debug for the traceback")


def test_a_second_run_on_a_locked_folder_fails_at_once(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom generator.engine.run_folder import RunFolder\n"
         f"with RunFolder({str(run_dir)!r}).lock():\n    print('held', flush=True)\n    time.sleep(60)\n"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        res = CliRunner().invoke(main, ["run", str(ROOT / "specs" / "tiny.yaml"), "--out", str(run_dir)])
        assert time.perf_counter() - t0 < 5
        assert res.exit_code == 2, res.output
        assert f"is in use by another run (pid {holder.pid} on host " in res.stderr
        assert not (run_dir / "plan.parquet").exists()
    finally:
        holder.kill()
        holder.wait()


def test_scoring_uses_every_by_and_the_embedder(proj, tmp_path):
    from generator import run
    from generator.testing.fake import FakeBackend
    from generator.engine.executors.local import LocalExecutor

    spec = load_spec(proj / "spec.yaml", {"scoring": "{metrics: [distinct_n], by: [topic, template], "
                                                     "embedder: minilm}"})
    fake = FakeBackend(responder=lambda r: f"answer {r.sampling.seed} about things")
    res = run(spec, out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda cfg, **_: fake))
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["embedder"] == "minilm" and scores["by"] == "topic"
    per_by = scores["per_by"]
    assert set(per_by) == {"topic", "template"}
    by_template = next(iter(per_by["template"].values()))["distinct_n"]
    by_topic = next(iter(per_by["topic"].values()))["distinct_n"]
    assert by_template and set(by_template) <= {"qa", "card"}  # ok rows only: `card` wants JSON
    assert len(by_topic) >= 2 and not set(by_topic) & {"qa", "card"} and res.scores["per_by"] == per_by
