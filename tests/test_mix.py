"""`synthgen mix`: exact token accounting, selection, formats, determinism and errors.

Real text is GSM8K train (shared data folder); the synthetic side is a run folder built here.
A small BPE tokenizer trained on GSM8K in a second keeps the tests fast and offline.
"""
from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from generator.core.errors import SpecError, SynthgenError
from generator.mix import (MANIFEST_NAME, MixConfig, RepetitionWarning, best_fit, build_mix, hamilton,
                           load_mix_config, load_shard_rows, parse_ratio, read_megatron, select_documents)
from helpers import importorskip_ci, skip_or_fail

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
TRAIN = GSM8K / "train.jsonl"
REAL = TRAIN  # the tests' real side; a 2,000-row slice of TRAIN (fixture below) unless a test says otherwise
if not TRAIN.is_file():
    skip_or_fail(f"{TRAIN} not found", module_level=True)
EOS = "<|endoftext|>"
TEMPLATE = "{question}\n{answer}"


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rows = [json.loads(x) for x in TRAIN.read_text().splitlines()[:3000]]
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows], trainer)
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="session")
def recount(tok_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    def count(texts: list[str]) -> list[int]:  # independent of generator.mix: one doc, one EOS each
        return [len(e.ids) + 1 for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    count.tok = tok
    return count


def _synthetic_rows(n: int = 400, start: int = 0) -> list[dict]:
    qs = [json.loads(x) for x in (GSM8K / "test.jsonl").read_text().splitlines()][start:start + n]
    rows = []
    for i, q in enumerate(qs):
        j = start + i
        rows.append({
            "id": f"syn-{j:05d}", "round": 1 + j % 2, "topic_id": j % 5, "topic": f"topic {j % 5}",
            "subtopic": "s", "template": "qa" if j % 3 else "story", "model": "m",
            "status": "truncated" if j % 17 == 0 else "ok",
            "text": f"Problem: {q['question']}\nSolution: {q['answer']}",
            "messages": [{"role": "system", "content": "Solve it."}, {"role": "user", "content": q["question"]}],
            "completion": q["answer"],
            "duplicate_of": f"syn-{j - 1:05d}" if j % 19 == 0 else None,
            "prompt_hash": f"h{j}",
        })
    return rows


@pytest.fixture(scope="session")
def train_small(tmp_path_factory) -> Path:
    """The first 2,000 GSM8K train rows: real text that counts in a fraction of a second."""
    path = tmp_path_factory.mktemp("real") / "gsm8k-2k.jsonl"
    path.write_text("\n".join(TRAIN.read_text().splitlines()[:2000]) + "\n")
    return path


@pytest.fixture(autouse=True)
def _real_path(train_small, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REAL", train_small)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    import polars as pl

    run = tmp_path_factory.mktemp("run") / "run-a"
    (run / "generations").mkdir(parents=True)
    pl.DataFrame(_synthetic_rows(400, 0)).write_parquet(run / "generations" / "part-00000.parquet")
    pl.DataFrame(_synthetic_rows(300, 400)).write_parquet(run / "generations" / "part-00001.parquet")
    return run


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path_factory.getbasetemp() / "synthgen-cache"))


def _cfg(tok_dir, run_dir, out, **kw) -> dict:
    base = {"real": [{"path": str(REAL), "text_template": TEMPLATE, "name": "gsm8k"}],
            "synthetic": [{"run": str(run_dir), "name": "syn"}],
            "tokenizer": str(tok_dir), "out": str(out), "seed": 7, "format": "jsonl", "shard_tokens": 20_000}
    base.update(kw)
    return base


def _expected_texts(run_dir) -> tuple[dict, dict]:
    real = {f"gsm8k:{i}": TEMPLATE.format(**json.loads(x)) for i, x in enumerate(TRAIN.read_text().splitlines())}
    # REAL is TRAIN or its first rows, so row indices agree
    syn = {}
    for f in sorted((run_dir / "generations").glob("part-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            if r["status"] == "ok" and r["duplicate_of"] is None:
                syn[r["id"]] = r
    return real, syn


def _rows(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("part-*")):
        if f.name.endswith((".jsonl", ".jsonl.zst", ".parquet")) and ".docs." not in f.name:
            rows += load_shard_rows(f)
    return rows


# ------------------------------------------------------------------ core accounting

def test_ratios_exact_no_loss_one_pass(tok_dir, run_dir, tmp_path, recount):
    ratios = ["1:0", "8:1", "4:1", "1:1"]
    res = build_mix(_cfg(tok_dir, run_dir, tmp_path / "mix", ratios=ratios, total_tokens=60_000))
    real_texts, syn_rows = _expected_texts(run_dir)
    manifest = json.loads((tmp_path / "mix" / MANIFEST_NAME).read_text())
    assert manifest == json.loads(json.dumps(res.manifest))
    assert manifest["token_count"]["eos_per_document"] == 1
    for mix in manifest["mixes"]:
        folder = tmp_path / "mix" / mix["folder"]
        assert mix["folder"] == "ratio-" + mix["ratio"].replace(":", "_")
        rows = _rows(folder)
        tokens = Counter()
        for row, n in zip(rows, recount([r["text"] for r in rows])):
            assert set(row) == {"text", "source", "kind", "lineage_id"}
            if row["kind"] == "real":
                assert row["source"] == "gsm8k" and row["text"] == real_texts[row["lineage_id"]]  # whole doc
            else:
                assert row["source"] == "syn" and row["text"] == syn_rows[row["lineage_id"]]["text"]
            tokens[row["kind"]] += n
        ids = [r["lineage_id"] for r in rows]
        assert len(ids) == len(set(ids)), "a document was repeated"
        assert tokens["real"] == mix["tokens"]["real"] and tokens["synthetic"] == mix["tokens"]["synthetic"]
        assert mix["tokens"]["total"] == 60_000  # the budget, exactly
        r, s = parse_ratio(mix["ratio"])
        if s == 0:
            assert tokens["synthetic"] == 0
        else:
            achieved = tokens["real"] / tokens["synthetic"]
            assert abs(achieved / float(r / s) - 1) < 0.005, (mix["ratio"], achieved)
        # per-shard counts and limits
        assert sum(sh["tokens"] for sh in mix["shards"]) == mix["tokens"]["total"]
        for sh in mix["shards"]:
            shard_rows = load_shard_rows(tmp_path / "mix" / sh["file"])
            assert sum(recount([x["text"] for x in shard_rows])) == sh["tokens"] <= 20_000
            assert len(shard_rows) == sh["docs"]


def test_no_document_lost_at_full_budget(tok_dir, run_dir, tmp_path, recount):
    """1:1 with the default budget uses every kept synthetic document once (real: all of GSM8K train)."""
    cfg = _cfg(tok_dir, run_dir, tmp_path / "m", ratio="1:1")
    cfg["real"][0]["path"] = str(TRAIN)
    res = build_mix(cfg)
    _, syn_rows = _expected_texts(run_dir)
    rows = _rows(tmp_path / "m")
    got = [r["lineage_id"] for r in rows if r["kind"] == "synthetic"]
    assert sorted(got) == sorted(syn_rows)  # skipped rows (truncated, duplicates) are absent
    mix = res.manifest["mixes"][0]
    syn = next(s for s in mix["sources"] if s["name"] == "syn")
    assert syn["repetition_factor"] == 1.0 and syn["max_doc_repeats"] == 1
    assert syn["fraction_of_available"] == 1.0
    assert mix["tokens"]["real"] == mix["tokens"]["synthetic"]
    src = next(s for s in res.manifest["sources"] if s["name"] == "syn")
    assert src["skipped_rows"] == {"status": 42, "duplicate": 34}
    assert res.manifest["total_tokens"]["budget"] == 2 * syn["available_tokens"]


def test_real_folder_of_mixed_files(tok_dir, run_dir, tmp_path):
    """A folder of .parquet + .jsonl.zst files; lineage row indices run across files in sorted order."""
    import polars as pl
    import pyarrow as pa

    rows = [json.loads(x) for x in TRAIN.read_text().splitlines()[:600]]
    folder = tmp_path / "real"
    folder.mkdir()
    pl.DataFrame(rows[:300]).write_parquet(folder / "a.parquet")
    with pa.output_stream(str(folder / "b.jsonl.zst"), compression="zstd") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[300:]).encode())
    (folder / "notes.txt").write_text("ignored")
    cfg = _cfg(tok_dir, run_dir, tmp_path / "m", ratio="1:0", total_tokens=30_000)
    cfg["real"] = [{"path": str(folder), "text_template": TEMPLATE}]
    res = build_mix(cfg)
    out = _rows(tmp_path / "m")
    assert out and all(r["source"] == "real" for r in out)
    for r in out:
        i = int(r["lineage_id"].split(":")[1])
        assert r["text"] == TEMPLATE.format(**rows[i])
    assert {int(r["lineage_id"].split(":")[1]) >= 300 for r in out} == {True, False}
    files = res.manifest["sources"][0]["files"]
    assert [Path(f["path"]).name for f in files] == ["a.parquet", "b.jsonl.zst"] and files[1]["first_row"] == 300


def test_topics_stratified(tok_dir, run_dir, tmp_path):
    res = build_mix(_cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1", total_tokens=50_000))
    syn = next(s for s in res.manifest["mixes"][0]["sources"] if s["name"] == "syn")
    total_avail = sum(t["available_tokens"] for t in syn["topics"].values())
    assert len(syn["topics"]) == 5
    for t in syn["topics"].values():
        share = syn["tokens"] * t["available_tokens"] / total_avail
        assert abs(t["tokens"] - share) <= 1 + 0.01 * share


def test_filters(tok_dir, run_dir, tmp_path):
    cfg = _cfg(tok_dir, run_dir, tmp_path / "m", ratio="1:1")
    cfg["synthetic"][0]["filters"] = {"rounds": [2], "templates": ["qa"]}
    res = build_mix(cfg)
    _, syn_rows = _expected_texts(run_dir)
    want = {k for k, r in syn_rows.items() if r["round"] == 2 and r["template"] == "qa"}
    got = {r["lineage_id"] for r in _rows(tmp_path / "m") if r["kind"] == "synthetic"}
    assert got == want
    skipped = res.manifest["sources"][1]["skipped_rows"]
    assert set(skipped) <= {"status", "round", "template", "duplicate"} and skipped["round"] > 0


@pytest.mark.parametrize("fmt", ["jsonl.zst", "parquet", "megatron"])
def test_same_seed_byte_identical(tok_dir, run_dir, tmp_path, fmt):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_mix(_cfg(tok_dir, run_dir, tmp_path / name, ratios=["4:1", "2:1"], total_tokens=40_000,
                       seed=seed, format=fmt))
        outs.append({str(p.relative_to(tmp_path / name)): p.read_bytes()
                     for p in sorted((tmp_path / name).rglob("part-*"))})
    assert outs[0] == outs[1] and len(outs[0]) >= 4
    assert outs[0] != outs[2]


def test_repetition_only_when_asked(tok_dir, run_dir, tmp_path, recount):
    probe = build_mix(_cfg(tok_dir, run_dir, tmp_path / "p", ratio="1:1"))
    syn_avail = probe.manifest["sources"][1]["available_tokens"]
    budget = 5 * syn_avail + (5 * syn_avail) % 2  # even; 1:1 needs 2.5x the synthetic tokens
    with pytest.raises(SynthgenError) as exc:
        build_mix(_cfg(tok_dir, run_dir, tmp_path / "x", ratio="1:1", total_tokens=budget))
    msg = str(exc.value)
    assert "\n" not in msg and f"{budget // 2:,}" in msg and f"{syn_avail:,}" in msg
    assert f"lower total_tokens to {2 * syn_avail:,}, or set allow_repetition: true" in msg
    with pytest.warns(RepetitionWarning, match=r"repeated 2\.500x"):
        res = build_mix(_cfg(tok_dir, run_dir, tmp_path / "r", ratio="1:1", total_tokens=budget,
                             allow_repetition=True))
    mix = res.manifest["mixes"][0]
    syn = next(s for s in mix["sources"] if s["name"] == "syn")
    assert syn["max_doc_repeats"] == 3 and abs(syn["repetition_factor"] - 2.5) < 1e-3
    rows = _rows(tmp_path / "r")
    counts = Counter(r["lineage_id"] for r in rows if r["kind"] == "synthetic")
    assert min(counts.values()) == 2 and max(counts.values()) == 3
    tok = Counter()
    for r, n in zip(rows, recount([r["text"] for r in rows])):
        tok[r["kind"]] += n
    assert tok["real"] == tok["synthetic"] == budget // 2


# ------------------------------------------------------------------ formats

def test_formats_load_and_megatron_roundtrip(tok_dir, run_dir, tmp_path, recount):
    cfg = dict(ratio="4:1", total_tokens=30_000, shard_tokens=12_000)
    results = {fmt: build_mix(_cfg(tok_dir, run_dir, tmp_path / fmt.replace(".", "_"), format=fmt, **cfg))
               for fmt in ("jsonl", "jsonl.zst", "parquet", "megatron")}
    ref = _rows(tmp_path / "jsonl")
    assert _rows(tmp_path / "jsonl_zst") == ref == _rows(tmp_path / "parquet")  # same order in every format
    for fmt in ("jsonl", "jsonl.zst", "parquet"):
        assert len(results[fmt].manifest["mixes"][0]["shards"]) == 3
    # Megatron: decode .bin/.idx and compare the tokens with the text rows of the same mix
    mg = results["megatron"].manifest["mixes"][0]
    assert results["megatron"].manifest["tokenizer"]["megatron_dtype"] == "uint16"
    docs, meta = [], []
    for sh in mg["shards"]:
        prefix = tmp_path / "megatron" / sh["file"][: -len(".bin")]
        raw = (prefix.with_suffix(".idx")).read_bytes()
        assert raw[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<Q", raw[9:17])[0] == 1 and raw[17] == 8
        seqs, ndoc = struct.unpack("<QQ", raw[18:34])
        assert ndoc == seqs + 1 == sh["docs"] + 1
        assert len(raw) == 34 + 4 * seqs + 8 * seqs + 8 * ndoc
        assert prefix.with_suffix(".bin").stat().st_size == 2 * sh["tokens"]
        docs += read_megatron(prefix)
        meta += pq.read_table(prefix.with_name(prefix.name + ".docs.parquet")).to_pylist()
    assert [m["lineage_id"] for m in meta] == [r["lineage_id"] for r in ref]
    eos = recount.tok.token_to_id(EOS)
    for ids, row in zip(docs, ref):
        want = recount.tok.encode(row["text"], add_special_tokens=False).ids + [eos]
        assert ids.tolist() == want
        assert recount.tok.decode(ids[:-1].tolist()) == row["text"]
    assert sum(len(d) for d in docs) == mg["tokens"]["total"] == 30_000
    assert len(mg["megatron_data_path"]) == 2 * len(mg["shards"])


def test_megatron_int32_for_large_vocab(tmp_path, run_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {w for x in TRAIN.read_text().splitlines()[:500] for w in TEMPLATE.format(**json.loads(x)).split()}
    vocab = {EOS: 0, "[UNK]": 1}
    for w in sorted(words):
        vocab[w] = len(vocab)
    for i in range(70_000 - len(vocab)):
        vocab[f"filler{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "big").mkdir()
    tok.save(str(tmp_path / "big" / "tokenizer.json"))
    res = build_mix(_cfg(tmp_path / "big", run_dir, tmp_path / "m", ratio="4:1", total_tokens=8_000,
                         format="megatron"))
    sh = res.manifest["mixes"][0]["shards"][0]
    prefix = tmp_path / "m" / sh["file"][: -len(".bin")]
    assert prefix.with_suffix(".idx").read_bytes()[17] == 4  # int32
    docs = read_megatron(prefix)
    assert docs[0].dtype == np.int32 and int(max(d.max() for d in docs)) < 70_000
    assert sum(len(d) for d in docs) == sh["tokens"] == 8_000


def test_loads_with_datasets(tok_dir, run_dir, tmp_path):
    datasets = importorskip_ci("datasets")
    for fmt, builder in (("parquet", "parquet"), ("jsonl.zst", "json"), ("jsonl", "json")):
        out = tmp_path / fmt.replace(".", "_")
        res = build_mix(_cfg(tok_dir, run_dir, out, ratio="2:1", total_tokens=15_000, format=fmt))
        files = [str(out / sh["file"]) for sh in res.manifest["mixes"][0]["shards"]]
        ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == res.manifest["mixes"][0]["docs"]["total"]
        assert set(ds.column_names) == {"text", "source", "kind", "lineage_id"}


def test_messages_layout(tok_dir, run_dir, tmp_path, train_small):
    cfg = _cfg(tok_dir, run_dir, tmp_path / "m", ratio="2:1", total_tokens=20_000, layout="messages",
               format="parquet")
    cfg["real"] = [{"path": str(REAL), "name": "gsm8k", "user_template": "{question}",
                    "assistant_template": "{answer}"}]
    res = build_mix(cfg)
    real_texts, syn_rows = _expected_texts(run_dir)
    rows = pq.read_table(tmp_path / "m" / res.manifest["mixes"][0]["shards"][0]["file"]).to_pylist()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    total = Counter()
    for row in rows:
        msgs = row["messages"]
        assert msgs[-1]["role"] == "assistant"
        if row["kind"] == "synthetic":
            src = syn_rows[row["lineage_id"]]
            assert msgs == src["messages"] + [{"role": "assistant", "content": src["completion"]}]
        else:
            assert [m["role"] for m in msgs] == ["user", "assistant"]
            assert msgs[0]["content"] + "\n" + msgs[1]["content"] == real_texts[row["lineage_id"]]
        # this tokenizer has no chat template: plain "role: content" lines are counted
        text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
        total[row["kind"]] += len(tok.encode(text, add_special_tokens=False).ids) + 1
    mix = res.manifest["mixes"][0]
    assert total["real"] == mix["tokens"]["real"] and total["synthetic"] == mix["tokens"]["synthetic"]
    assert abs(total["real"] / total["synthetic"] / 2 - 1) < 0.005
    assert "plain" in res.manifest["token_count"]["messages_rendering"]


def test_chat_template_counts(tok_dir, run_dir, tmp_path):
    """With a chat template next to the tokenizer, counts follow the rendered conversation."""
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    (d / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im|>{{ m['role'] }}\n{{ m['content'] }}</|im|>\n{% endfor %}")
    cfg = _cfg(d, run_dir, tmp_path / "m", ratio="0:1", total_tokens=5_000, layout="messages", real=[])
    res = build_mix(cfg)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    rows = _rows(tmp_path / "m")
    n = sum(len(tok.encode("".join(f"<|im|>{m['role']}\n{m['content']}</|im|>\n" for m in r["messages"]),
                           add_special_tokens=False).ids) + 1 for r in rows)
    assert n == res.manifest["mixes"][0]["tokens"]["synthetic"] == 5_000
    assert "chat template" in res.manifest["token_count"]["messages_rendering"]


# ------------------------------------------------------------------ cache, config, errors

def test_tokcache_reused(tok_dir, run_dir, tmp_path, monkeypatch, train_small):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    real = [{"path": str(REAL), "text_template": TEMPLATE, "name": "gsm8k"}]
    a = build_mix(_cfg(tok_dir, run_dir, tmp_path / "a", ratio="4:1", total_tokens=10_000, real=real))
    assert a.manifest["token_count"]["files_counted"] == 3
    caches = list((tmp_path / "cache" / "tokcache").glob("*.tokcache.parquet"))
    assert len(caches) == 3
    b = build_mix(_cfg(tok_dir, run_dir, tmp_path / "b", ratio="4:1", total_tokens=10_000, real=real))
    assert b.manifest["token_count"]["files_from_cache"] == 3 and b.manifest["token_count"]["files_counted"] == 0
    assert a.manifest["mixes"] == b.manifest["mixes"]


def test_out_folder_guard(tok_dir, run_dir, tmp_path):
    build_mix(_cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1", total_tokens=10_000))
    with pytest.raises(SynthgenError, match="not empty"):
        build_mix(_cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1", total_tokens=10_000))
    build_mix(_cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1", total_tokens=5_000, overwrite=True,
                   shard_tokens=100_000))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [MANIFEST_NAME, "part-00000.jsonl"]


def test_missing_field_error(tok_dir, run_dir, tmp_path):
    cfg = _cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1")
    cfg["real"] = [{"path": str(TRAIN)}]  # text_field defaults to "text"; GSM8K has question/answer
    with pytest.raises(SynthgenError) as exc:
        build_mix(cfg)
    msg = str(exc.value)
    assert "\n" not in msg and str(TRAIN) in msg and "'text'" in msg and "question, answer" in msg


def test_missing_synthetic_column_error(tok_dir, tmp_path):
    import polars as pl

    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    pl.DataFrame({"id": ["a"], "status": ["ok"], "body": ["x"]}).write_parquet(run / "generations" / "part-0.parquet")
    with pytest.raises(SynthgenError, match=r"part-0\.parquet: no field 'text' \(fields: id, status, body\)"):
        build_mix(_cfg(tok_dir, run, tmp_path / "m", ratio="4:1"))


def test_not_enough_real(tok_dir, run_dir, tmp_path):
    with pytest.raises(SynthgenError, match=r"needs [\d,]+ real tokens but the real sources have [\d,]+; "
                                            r"lower total_tokens to [\d,]+, or set allow_repetition: true"):
        build_mix(_cfg(tok_dir, run_dir, tmp_path / "m", ratio="4:1", total_tokens=10**9))
    assert not (tmp_path / "m").exists()  # nothing written


def test_config_validation_and_yaml(tmp_path, tok_dir, run_dir):
    with pytest.raises(Exception, match="ratio"):
        MixConfig.model_validate({"real": [{"path": "x"}], "synthetic": [{"run": "r"}]})
    with pytest.raises(Exception, match="extra"):
        MixConfig.model_validate({"ratio": "4:1", "real": [{"path": "x", "colour": 1}], "synthetic": [{"run": "r"}]})
    with pytest.raises(Exception, match="megatron"):
        MixConfig.model_validate({"ratio": "4:1", "real": [{"path": "x"}], "synthetic": [{"run": "r"}],
                                  "layout": "messages", "format": "megatron"})
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: demo\nmix:\n  real:\n    - path: {TRAIN}\n"
                    f"      text_template: \"{{question}}\\n{{answer}}\"\n"
                    f"  synthetic:\n    - run: {run_dir}\n  ratios: [1:0, 4:1, \"2:1\"]\n  total_tokens: 20k\n"
                    f"  tokenizer: {tok_dir}\n  out: mixes\n")
    cfg = load_mix_config(spec)
    assert cfg.ratios == ["1:0", "4:1", "2:1"] and cfg.total_tokens == 20_000
    assert cfg.out == tmp_path / "mixes"  # relative to the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratio: \"4:1\"\nreal: [{path: a}]\nsynthetic: [{run: b}]\nshard_token: 5\n")
    with pytest.raises(SpecError) as exc:
        load_mix_config(bad)
    assert str(exc.value) == (f"{bad}:4:1: unknown key 'shard_token'; remove it or check the spelling "
                              f"(docs/mix.md lists the keys)")


def test_cli(tok_dir, run_dir, tmp_path):
    from click.testing import CliRunner

    from generator.cli.mix import mix

    cfg = tmp_path / "mix.yaml"
    cfg.write_text(f"real:\n  - path: {REAL}\n    text_template: \"{{question}}\\n{{answer}}\"\n"
                   f"synthetic:\n  - run: {run_dir}\nratio: 4:1\ntokenizer: {tok_dir}\n")
    r = CliRunner().invoke(mix, [str(cfg), "--total-tokens", "10k", "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    assert "4:1" in r.output and (tmp_path / "o" / MANIFEST_NAME).is_file()
    r = CliRunner().invoke(mix, ["--real", str(TRAIN), "--synthetic", str(run_dir), "--ratio", "4:1",
                                 "--ratio", "1:1", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "p")])
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "no field 'text' (fields: question, answer)" in errors[0]
    r = CliRunner().invoke(mix, ["--real", str(REAL), "--text-template", "{question}\\n{answer}",
                                 "--synthetic", str(run_dir), "--ratio", "4:1", "--ratio", "1:1",
                                 "--tokenizer", str(tok_dir), "--out", str(tmp_path / "p"), "--format", "parquet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "ratio-4_1" / "part-00000.parquet").is_file()


# ------------------------------------------------------------------ units

def test_hamilton():
    assert hamilton(10, [1, 1, 1]) == [4, 3, 3]
    assert MixConfig.model_validate({"ratio": "4:1", "real": [{"path": "a"}], "synthetic": [{"run": "b"}],
                                     "total_tokens": "2e6", "shard_tokens": "1.5M"}).shard_tokens == 1_500_000
    assert hamilton(100, [4, 1]) == [80, 20]
    assert hamilton(7, [0, 5]) == [0, 7]
    assert sum(hamilton(1_000_003, [3, 7, 11, 13])) == 1_000_003
    assert parse_ratio(241) == parse_ratio("4:1")  # YAML 1.1 reads 4:1 as 241


def test_select_documents_never_overshoots():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=500)
    for target in (0, 17, 1000, 12_345, int(lengths.sum()) - 5, int(lengths.sum()) + 5):
        idx = select_documents(lengths, target, np.random.default_rng(1))
        assert len(idx) == len(set(idx.tolist()))
        got = int(lengths[idx].sum())
        assert got <= target
        if 20 <= target <= lengths.sum():
            assert got == target or target > lengths.sum() - 20
    picked, left = best_fit(np.array([5, 3, 9]), np.array([0, 1, 2]), 8)
    assert sorted(picked.tolist()) == [0, 1] and left == 0
