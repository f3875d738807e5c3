"""Model aliases and the embedded model's one-time conversion."""
from __future__ import annotations

import threading

import pytest

from generator.core import model_aliases as models
from generator.core.errors import ModelError
from helpers import importorskip_ci


def test_non_alias_passes_through():
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert models.resolve_model("/data/my-model") == "/data/my-model"


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(models.EMBEDDED, "ghost", {"package": "no_such_pkg_xyz", "gguf": "x.gguf",
                                                   "description": "", "install": "pip install ghost"})
    with pytest.raises(ModelError, match="needs the no_such_pkg_xyz package; install it with `pip install ghost`"):
        models.resolve_model("ghost")


def test_conversion_runs_once_under_a_lock(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "gguf_path", lambda alias: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"x")

    def slow_convert(gguf, out):
        calls.append(1)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        threading.Event().wait(0.3)

    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_converted("smollm2-135m")))
               for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").exists()
    assert not list((tmp_path / "models").glob(".*partial*"))


@pytest.mark.slow
def test_embedded_model_converts_to_a_loadable_folder():
    importorskip_ci("transformers")
    path = models.ensure_converted("smollm2-135m")
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(path).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
