"""Run folders on object storage: a real S3-compatible server (moto's, on 127.0.0.1) started for the
session; `synthgen run --out s3://...` killed mid-run and resumed, usage and export read back
from the bucket, and the one-line errors (no bucket, no credentials). The model is the fake backend
(tests/fake_synthgen.py in CLI subprocesses): these tests are about the storage, not the text."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from helpers import S3_BUCKET, kill_when, salvaged_keys, small_spec

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_synthgen.py"
BUCKET = S3_BUCKET  # the `s3` fixture (conftest: a moto server) made it

pytestmark = pytest.mark.slow  # starts a server


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FAKE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _keys(url: str) -> set[str]:
    from generator.core.run_layout import read_answers

    frame = read_answers(url, ["key"])
    return set() if frame is None else set(frame["key"].to_list())


def test_run_killed_and_resumed_on_s3_pays_only_what_was_never_published(s3, tmp_path):
    from generator.core.run_layout import generation_files, read_generation_files, read_manifest, read_plan
    from generator.export.usage import compute_usage

    spec = tmp_path / "spec.yaml"
    spec.write_text(small_spec("s3-resume", 5, max_tokens=32, run="{shard_size: 2, window: 2}"))
    url = f"s3://{BUCKET}/runs/resume"
    cmd = [sys.executable, str(FAKE), "run", str(spec), "--out", url]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHGEN_TEST_FAKE_DELAY": "0.1",
           "SYNTHGEN_PUBLISH_SECONDS": "0.3"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    kill_when(proc, lambda: bool(generation_files(url)) and len(_keys(url)) >= 5, tmp_path / "first.log", 90, 0.1)
    before = _keys(url)
    shards_before = {f.rsplit("/", 1)[-1] for f in generation_files(url)}
    assert 0 < len(shards_before) < 6 and s3.exists(f"{BUCKET}/runs/resume/.lock")  # a dead run's lock is left
    first = compute_usage(url)
    [killed] = first["sessions"]
    # every published answer is counted, and nothing else: usage is written in the same file
    assert killed["total"]["requests"] == len(before)

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr  # the lock of the dead run (this host, pid gone) was taken over
    gens = read_generation_files(url)
    plan = read_plan(url)
    ids = gens.filter(pl.col("final"))["id"].to_list() if "final" in gens.columns else gens["id"].to_list()
    assert sorted(ids) == sorted(plan["id"].to_list()) and len(ids) == len(set(ids)) == 12
    after = _keys(url)
    manifest = read_manifest(url)
    # what the killed run had answered but not yet published was salvaged from its local working
    # copy by the resume (same machine), and counted under the killed session
    salvaged = salvaged_keys(url)
    assert not salvaged & before
    # the resume paid only for the requests the killed run never answered, each once
    paid = after - before - salvaged
    assert before <= after and manifest["timings"][-1]["model_calls"] == len(paid) > 0
    u = compute_usage(url)
    assert [s["total"]["requests"] for s in u["sessions"]] == [len(before) + len(salvaged), len(paid)]
    assert not s3.exists(f"{BUCKET}/runs/resume/.lock")  # released at the end
    assert "AWS_SECRET" not in json.dumps(manifest) and "testing" not in json.dumps(manifest.get("spec"))

    # `synthgen usage` reads the published files in the bucket
    res = _cli("usage", url)
    assert res.returncode == 0 and f"{len(after):,}" in res.stdout, res.stdout + res.stderr


def _main(*args: str):
    """The CLI in this process (no model is built: a run here fails before, or uses the fake)."""
    from click.testing import CliRunner

    from generator.cli.main import main

    return CliRunner().invoke(main, list(args))


def _fake_run_in_bucket(tmp_path, name: str, seed: int, shard_size: int) -> str:
    """A 12-record run on the fake backend written to s3://BUCKET/runs/NAME; its URL."""
    from generator.config.spec import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec
    from generator.testing.fake import FakeBackend

    spec = tmp_path / "spec.yaml"
    spec.write_text(small_spec(f"s3-{name}", seed, max_tokens=32, run=f"{{shard_size: {shard_size}}}"))
    url = f"s3://{BUCKET}/runs/{name}"
    res = run_spec(load_spec(spec), out=url, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()),
                   score=False)
    assert res.generated == 12
    return url


def test_export_reads_and_writes_the_bucket(s3, tmp_path):
    url = _fake_run_in_bucket(tmp_path, "export", 6, 4)
    assert s3.exists(f"{BUCKET}/runs/export/README.md") and s3.exists(f"{BUCKET}/runs/export/manifest.json")

    to = f"s3://{BUCKET}/exports/one"
    out = _main("export", url, "--to", to)
    assert out.exit_code == 0, out.output
    files = s3.glob(f"{BUCKET}/exports/one/**")
    assert any(f.endswith("README.md") for f in files), files
    data = [f for f in files if f.endswith(".parquet")]
    assert data and sum(pl.read_parquet(s3.open(f, "rb")).height for f in data) == 12
    again = _main("export", url, "--to", to)  # an export prefix that holds objects is not overwritten silently
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_storage_errors_are_one_line_with_the_fix(s3, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(small_spec("s3-errors", 7, max_tokens=32, run="{shard_size: 4}"))

    def one_line(res, *words: str) -> None:
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and all(w in res.output for w in words), res.output

    one_line(_main("run", str(spec), "--out", "s3://no-such-bucket-here/run"), "no-such-bucket-here", "create")
    one_line(_main("run", str(spec), "--out", "nosuchproto://x/run"), "nosuchproto")
    # a live run's lock object: a second run on the same URL fails at once, naming the holder
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(), "token": "x"}
    s3.pipe_file(f"{BUCKET}/runs/locked/.lock", json.dumps(lock).encode())
    one_line(_main("run", str(spec), "--out", f"s3://{BUCKET}/runs/locked"), "in use by another run",
             f"pid {os.getpid()}")
    # no credentials at all (a fresh process: this one's S3 client already holds them)
    bare = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    res = _cli("run", str(spec), "--out", f"s3://{BUCKET}/runs/nocreds",
               env={**bare, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                    "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    assert res.returncode == 2 and "credentials" in res.stderr and "AWS_ACCESS_KEY_ID" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _tokenizer(folder: Path, texts: list[str]) -> Path:
    """A small BPE tokenizer trained here in a second (offline; the counts only need to be exact)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_mix_reads_a_run_in_the_bucket_and_uploads_the_mix(s3, tmp_path, shared_data, monkeypatch):
    from generator.config.spec import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec
    from generator.testing.fake import FakeBackend

    import tempfile

    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the mix builds before it uploads
    spec = tmp_path / "spec.yaml"
    spec.write_text(small_spec("s3-mix", 8, max_tokens=32, run="{shard_size: 5}"))
    run_url = f"s3://{BUCKET}/runs/mixsrc"
    res = run_spec(load_spec(spec), out=run_url, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()),
                   score=False)
    assert res.generated == 12 and len(s3.glob(f"{BUCKET}/runs/mixsrc/generations/part-*.parquet")) == 3

    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]]
    real = tmp_path / "gsm8k-300.jsonl"
    real.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = _tokenizer(tmp_path / "tok", [r["question"] + "\n" + r["answer"] for r in rows])

    def mix_file(name: str, out: str, run: str = run_url) -> Path:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(f"real:\n  - path: {real}\n    text_template: \"{{question}}\\n{{answer}}\"\n"
                       f"synthetic:\n  - run: {run}\n    name: syn\nratios: ['4:1', '1:1']\ntokenizer: {tok}\n"
                       f"seed: 3\nformat: jsonl\nshard_tokens: 2000\nout: {out}\n")
        return cfg

    # preflight: a run URL with nothing under it is one line naming it, before any token is counted
    missing = mix_file("missing", str(tmp_path / "never"), run=f"s3://{BUCKET}/runs/nothing-here")
    for cmd in (["validate", str(missing)], ["mix", str(missing)]):
        bad = _main(*cmd)
        assert bad.exit_code == 2 and "runs/nothing-here does not exist" in bad.output, bad.output
        assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output
    assert not (tmp_path / "never").exists()
    ok = _main("validate", str(mix_file("good", f"s3://{BUCKET}/mixes/one")))
    assert ok.exit_code == 0, ok.output

    local = _main("mix", str(mix_file("local", str(tmp_path / "local-mix"))), "-q")
    assert local.exit_code == 0, local.output
    remote = _main("mix", str(tmp_path / "good.yaml"), "-q")
    assert remote.exit_code == 0, remote.output
    assert f"wrote s3://{BUCKET}/mixes/one/mix_manifest.json" in remote.output

    want = json.loads((tmp_path / "local-mix" / "mix_manifest.json").read_text())
    got = json.loads(s3.cat_file(f"{BUCKET}/mixes/one/mix_manifest.json"))
    # the same documents and token counts as the local build, from the shards read out of the bucket
    for w, g in zip(want["mixes"], got["mixes"], strict=True):
        assert g["tokens"] == w["tokens"] and g["achieved_ratio"] == w["achieved_ratio"]
        assert g["tokens"]["synthetic"] > 0 and g["tokens"]["real"] > 0
        for shard in g["shards"]:
            for f in shard["files"]:
                assert s3.cat_file(f"{BUCKET}/mixes/one/{f}") == (tmp_path / "local-mix" / f).read_bytes()
    # whole documents (a dozen short synthetic ones here) bound how close each ratio gets
    assert got["mixes"][0]["achieved_ratio"] > 3 * got["mixes"][1]["achieved_ratio"] > 0
    [syn] = [s for s in got["sources"] if s["kind"] == "synthetic"]
    assert [f["path"] for f in syn["files"]] == [f"s3://{p}" for p in
                                                 sorted(s3.glob(f"{BUCKET}/runs/mixsrc/generations/part-*.parquet"))]
    uploaded = {p.split("/mixes/one/", 1)[1] for p in s3.find(f"{BUCKET}/mixes/one")}
    assert uploaded == {p.relative_to(tmp_path / "local-mix").as_posix()
                        for p in (tmp_path / "local-mix").rglob("*") if p.is_file()}
    assert not list(scratch.glob("synthgen-mix-*"))  # the local build folder (and the downloaded shards) are removed

    again = _main("mix", str(tmp_path / "good.yaml"), "-q")  # a prefix holding a mix is kept without overwrite
    assert again.exit_code == 2 and "overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    over = _main("mix", str(tmp_path / "good.yaml"), "-q", "--overwrite")
    assert over.exit_code == 0, over.output
    assert json.loads(s3.cat_file(f"{BUCKET}/mixes/one/mix_manifest.json"))["mixes"] == got["mixes"]


def _download(s3, prefix: str, dest: Path) -> Path:
    """Every object under `prefix` (bucket/key) as the same relative files under `dest`."""
    for key in s3.find(prefix):
        target = dest / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.get_file(key, str(target))
    return dest


def test_score_compare_report_usage_and_dedup_read_a_run_in_the_bucket(s3, tmp_path):
    from generator.core.run_layout import generation_files, read_parquet

    url = _fake_run_in_bucket(tmp_path, "read", 9, 5)
    local = _download(s3, f"{BUCKET}/runs/read", tmp_path / "local")
    assert (local / "manifest.json").is_file() and len(list((local / "generations").glob("part-*.parquet"))) == 3

    def both(*args: str, out: str | None = None) -> tuple[str, str]:
        """The command on the bucket and on the local copy; each output with its run named RUN (and
        its --out file OUT)."""
        got = []
        for run in (url, str(local)):
            dest = str(tmp_path / f"{out}-{len(got)}.json")
            r = _main(args[0], run, *args[1:], *(["--out", dest] if out else []))
            assert r.exit_code == 0, r.output
            got.append(r.output.replace(run, "RUN").replace(dest, "OUT"))
        return got[0], got[1]

    lex = "distinct_n,compression_ratio,exact_dup_rate,near_dup_rate"
    remote, here = both("score", "--metrics", lex, "--by", "template", "--embedder", "hash", out="score")
    assert remote == here and "(12 texts)" in remote
    a, b = (json.loads((tmp_path / f"score-{i}.json").read_text())["datasets"] for i in (0, 1))
    assert a[url] == b[str(local)] and a[url]["n_texts"] == 12 and a[url]["metrics"]["distinct_n"]["value"] > 0

    cmp = _main("compare", url, str(local), "--metrics", "distinct_n", "--embedder", "hash",
                "--out", str(tmp_path / "cmp.json"))
    assert cmp.exit_code == 0, cmp.output
    [row] = json.loads((tmp_path / "cmp.json").read_text())["table"]
    assert row["values"][url] == row["values"][str(local)] > 0 and row["diffs"][str(local)]["diff"] == 0
    header = next(line for line in cmp.output.splitlines() if line.startswith("metric"))
    assert header.split()[2:] == ["read", "local", "(Δ)"], cmp.output  # each column named by its folder

    remote, here = both("usage", "--json")
    ru, lu = json.loads(remote), json.loads(here)
    assert ru == lu and ru["source"] == "ledger" and ru["total"]["requests"] == 12, remote
    remote, here = both("report")
    assert remote == here and "usage of RUN" in remote and "counted from: the usage ledger" in remote
    assert any(line.split()[:2] == ["total", "12"] for line in remote.splitlines()), remote

    # dedup rewrites the shards in the bucket (each one PUT) exactly as it rewrites local ones
    remote, here = both("dedup", "--threshold", "0.3")
    assert remote == here and "ok_rows" in remote
    for f, g in zip(generation_files(url), sorted((local / "generations").glob("part-*.parquet")), strict=True):
        assert read_parquet(f)["duplicate_of"].to_list() == pl.read_parquet(g)["duplicate_of"].to_list()
    dups = sum(pl.read_parquet(g)["duplicate_of"].is_not_null().sum() for g in (local / "generations").glob("*.parquet"))
    remote, here = both("score", "--metrics", "distinct_n", "--embedder", "hash")
    assert remote == here and f"({12 - dups} texts)" in remote  # marked duplicates are left out of the scores


def test_a_url_that_holds_no_run_is_one_line_naming_it(s3, tmp_path):
    missing = f"s3://{BUCKET}/runs/nothing-here"
    s3.pipe_file(f"{BUCKET}/runs/stray/notes.txt", b"not a run")
    stray = f"s3://{BUCKET}/runs/stray"
    cases = [
        (["score", missing], [missing, "run folder not found"]),
        (["compare", missing, str(tmp_path)], [missing, "run folder not found"]),
        (["dedup", missing], [missing, "run folder not found"]),
        (["report", missing], [missing, "run folder not found"]),
        (["usage", missing], [missing, "run folder not found"]),
        (["report", stray], [stray, "not a run folder (no manifest.json)"]),
        (["usage", stray], [stray, "not a run folder (no manifest.json)"]),
        (["score", stray], [f"{stray}/generations", "no part-*.parquet files"]),
        (["score", "s3://no-such-bucket-here/runs/x"], ["no-such-bucket-here/runs/x"]),
    ]
    for args, words in cases:
        res = _main(*args)
        assert res.exit_code == 2 and "Traceback" not in res.output, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), \
            (args, res.output)
    # a local path keeps click's own check and message
    res = _main("score", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "does not exist" in res.output and len(res.output.strip().splitlines()) == 1
