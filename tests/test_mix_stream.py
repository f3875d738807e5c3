"""Streaming `synthgen mix`: the same content as the reference mixes, and memory bounded by the shard size.

The reference (tests/fixtures/mix/reference.json, see tests/mix_cases.py) was recorded from the
in-memory implementation; every case is rebuilt here with a cold and then a warm token cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mix_cases  # noqa: E402

REF = json.loads(mix_cases.REFERENCE.read_text())
ROOT = Path(__file__).resolve().parents[1]


def need_data() -> None:
    if not (mix_cases.GSM8K / "train.jsonl").is_file():
        msg = f"{mix_cases.GSM8K} not found"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need_data()
    w = tmp_path_factory.mktemp("mixref")
    mix_cases.make_inputs(w / "in")
    return w


def _same_files(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, digest in want.items():
        assert got[name] == digest, f"{name} differs from the reference (content)"


@pytest.mark.parametrize("name", sorted(REF["cases"]))
def test_reference_output_unchanged(work, name):
    cfg = mix_cases.cases(mix_cases.make_paths(work / "in"))[name]
    want = REF["cases"][name]
    cold = mix_cases.run_case(name, cfg, work, work / "out" / name)
    _same_files(cold["files"], want["files"])
    assert cold["manifest"] == want["manifest"]
    # again from the token cache: same shards, nothing counted
    warm = mix_cases.run_case(name, cfg, work, work / "warm" / name)
    _same_files(warm["files"], want["files"])
    tc, ref_tc = warm["manifest"]["token_count"], want["manifest"]["token_count"]
    assert tc["files_counted"] == 0 and tc["counted_this_run"] == 0
    assert tc["files_from_cache"] == ref_tc["files_counted"] + ref_tc["files_from_cache"]
    for k in ("files_counted", "counted_this_run", "files_from_cache"):
        tc[k] = ref_tc[k]
    assert warm["manifest"] == want["manifest"]


SMALL = {"reader.CHUNK_BYTES": 3_000, "gather.SPILL_BYTES": 30_000, "output_shards.WRITE_ROWS": 7,
         "index.MAX_IN_FLIGHT": 1}


@pytest.mark.parametrize("name", sorted(REF["cases"]))
def test_reference_output_small_chunks(work, name, monkeypatch):
    """Chunks of a few rows, many spill segments, JSONL written a few rows at a time, and (for two
    cases) counting in worker processes: still the reference content."""
    import importlib

    for target, value in SMALL.items():
        mod, attr = target.split(".")
        monkeypatch.setattr(importlib.import_module(f"generator.mix.{mod}"), attr, value)
    if name in ("jsonl_multi", "messages_parquet"):
        from generator.mix import counting

        monkeypatch.setattr(counting, "POOL_MIN_BYTES", 0)
        monkeypatch.setattr(counting, "TASK_DOCS", 500)
    cfg = mix_cases.cases(mix_cases.make_paths(work / "in"))[name]
    got = mix_cases.run_case(f"{name}-small", cfg, work, work / "small" / name)
    want = REF["cases"][name]
    _same_files(got["files"], want["files"])
    assert got["manifest"] == want["manifest"]
    assert not list((work / "small" / name).glob(".mix-spill*"))  # the spill file is gone


def test_word_cache_counts_exactly(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from generator.core.wordcount import PretokenCounter

    need_data()
    path = mix_cases.FIXTURE / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    fast = PretokenCounter.build(tok, path)
    assert fast is not None
    rows = mix_cases._gsm("train.jsonl")[:3000]
    texts = [f"{r['question']}\n{r['answer']}" for r in rows] + [
        "it's   odd\t\ttabs \r\n x", "trailing   ", "  lead", "'s'S'T 'RE we'll", "x\x0cy\x0bz", "",
        "caf\u00e9 \U0001F600 text", "a <|endoftext|> b", "1234567890" * 9, "\n\n\n", " ?!... \'\'\' --"]
    want = [len(e) for e in tok.encode_batch(texts, add_special_tokens=False)]
    assert fast.count(texts).tolist() == want
    assert fast.fast_docs > 2000 and fast.slow_docs >= 4  # non-ASCII, control and added-token texts
    # pipelines the word cache does not reproduce are left to the batch encoder
    wl = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "a": 2}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wl.save(str(tmp_path / "wl.json"))
    assert PretokenCounter.build(wl, tmp_path / "wl.json") is None
    data = json.loads(path.read_text())
    data["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "prefix.json").write_text(json.dumps(data))
    assert PretokenCounter.build(Tokenizer.from_file(str(tmp_path / "prefix.json")), tmp_path / "prefix.json") is None


def test_repetition_warning_points_at_the_caller(work):
    from generator.mix import RepetitionWarning, build_mix

    cfg = mix_cases.cases(mix_cases.make_paths(work / "in"))["parquet_filters_repeat"]
    with pytest.warns(RepetitionWarning) as rec:
        build_mix({**cfg, "out": str(work / "warn"), "cache_dir": str(work / "cache-warn")})
    assert rec[0].filename == __file__


MEMORY_SCRIPT = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import mix_cases
from generator.mix import build_mix

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if __name__ == "__main__":
    work, big = Path(sys.argv[2]), Path(sys.argv[3])
    p = mix_cases.make_paths(work / "in")
    cfg = {"synthetic": [{"run": str(p["run"]), "name": "syn"}], "ratio": "4:1", "tokenizer": str(p["tok"]),
           "cache_dir": str(work / "mem-cache"), "format": "jsonl"}
    # everything imported and warmed up on a small source first: the baseline
    build_mix({**cfg, "real": [{"path": str(p["qa"]), "name": "qa", "text_template": mix_cases.TEMPLATE}],
               "out": str(work / "mem-small")})
    base = peak()
    t = time.time()
    res = build_mix({**cfg, "real": [{"path": str(big), "name": "big"}], "out": str(work / "mem-big")})
    print(json.dumps({"baseline": base, "peak": peak(), "seconds": time.time() - t,
                      "docs": res.manifest["sources"][0]["available_docs"],
                      "counted": res.manifest["token_count"]["counted_this_run"]}))
"""


def test_memory_bounded_on_a_large_source(work, tmp_path):
    """A 200 MB JSONL source (short texts beside a large raw-HTML field, as in web dumps): the mix
    process grows by far less than the source, where holding the source in memory needs several times it."""
    rows = mix_cases._gsm("train.jsonl")
    big = tmp_path / "web.jsonl"
    size = 0
    with open(big, "w") as f:
        i = 0
        while size < 200_000_000:
            r = rows[i % len(rows)]
            html = f'<div class="q{i}"><p>' + r["answer"].replace("\n", "</p><p>") + "</p></div>"
            line = json.dumps({"id": i, "text": f"{r['question'][:60]} ({i})", "html": html * 3}) + "\n"
            f.write(line)
            size += len(line)
            i += 1
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(work), str(big)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["docs"] == i and m["counted"] > 0
    grew = m["peak"] - m["baseline"]  # about 80 MB here (8 MB chunks); the whole source in memory: ~500 MB
    assert grew < 0.5 * size, f"the mix process grew by {grew / 1e6:.0f} MB on a {size / 1e6:.0f} MB source"


def test_overwrite_removes_a_stale_spill(work):
    from generator.mix import build_mix

    cfg = {**mix_cases.cases(mix_cases.make_paths(work / "in"))["megatron"], "cache_dir": str(work / "cache-ow")}
    out = work / "ow"
    build_mix({**cfg, "out": str(out)})
    (out / ".mix-spill-123.arrows").write_bytes(b"left by a killed mix")
    build_mix({**cfg, "out": str(out), "overwrite": True})
    assert not list(out.glob(".mix-spill-*")) and not list(out.glob(".*.tmp"))
    assert json.loads((out / "mix_manifest.json").read_text())["mixes"][0]["tokens"]["total"] == 40_000
