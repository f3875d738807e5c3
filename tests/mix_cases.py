"""Reference mixes: fixed inputs and configurations whose outputs must never change byte for byte.

`tests/fixtures/mix/reference.json` holds, per case, a digest of what every output file holds and
the manifest (paths made relative). It was first written by the in-memory implementation of
`synthgen mix`; tests/test_mix_stream.py rebuilds every case and compares. Regenerate only for an
intended change:

    PYTHONPATH=. python tests/mix_cases.py            # rewrites tests/fixtures/mix/reference.json

Everything is compared by content, never by bytes a library wrote: Parquet, JSONL and zstd bytes
depend on the polars and pyarrow builds (their versions go into Parquet footers, and the inputs
themselves are written with polars), and those are not pinned by the test. So a file's digest is
of its rows, and every sha256 the manifest records is checked against the file it names, then
replaced by that file's content digest before the manifest is compared.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mix"
REFERENCE = FIXTURE / "reference.json"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
TEMPLATE = "{question}\n{answer}"
CHAT_TEMPLATE = "{% for m in messages %}<|im|>{{ m['role'] }}\n{{ m['content'] }}</|im|>\n{% endfor %}"


def _gsm(name: str) -> list[dict]:
    return [json.loads(x) for x in (GSM8K / name).read_text().splitlines()]


def make_paths(work: Path) -> dict[str, Path]:
    """Where make_inputs puts each input."""
    return {"tok": work / "tok", "tok_chat": work / "tok_chat", "qa": work / "qa.jsonl", "folder": work / "web",
            "chats": work / "chats.jsonl", "run": work / "run-a", "run2": work / "run-b"}


def make_inputs(work: Path) -> dict[str, Path]:
    """Real files of every supported kind (with empty and missing texts) and two synthetic runs."""
    import polars as pl
    import pyarrow as pa

    train, test = _gsm("train.jsonl"), _gsm("test.jsonl")
    work.mkdir(parents=True, exist_ok=True)
    p = make_paths(work)
    for d in (p["tok"], p["tok_chat"]):
        d.mkdir()
        shutil.copy(FIXTURE / "tokenizer.json", d / "tokenizer.json")
    (p["tok_chat"] / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # question/answer rows, used with text_template
    p["qa"].write_text("".join(json.dumps(r) + "\n" for r in train[:3000]))

    folder = p["folder"]  # a folder of .parquet, .jsonl.zst and .jsonl with a `text` field
    folder.mkdir()
    texts = [{"text": f"{r['question']}\n{r['answer']}", "url": f"https://example.org/{i}"}
             for i, r in enumerate(train[3000:4800])]
    texts[5]["text"] = None
    texts[650]["text"] = "   "
    texts[1300]["text"] = ""
    pl.DataFrame(texts[:600]).write_parquet(folder / "a.parquet")
    with pa.output_stream(str(folder / "b.jsonl.zst"), compression="zstd") as f:
        f.write("".join(json.dumps(r) + "\n" for r in texts[600:1200]).encode())
    lines = [json.dumps(r) for r in texts[1200:]]
    lines[7] = json.dumps({"url": "https://example.org/no-text"})  # no text field: skipped as "no text"
    (folder / "sub").mkdir()
    (folder / "sub" / "c.jsonl").write_text("\n".join(lines) + "\n")

    # a chat column
    rows = [{"messages": [{"role": "user", "content": r["question"]},
                          {"role": "assistant", "content": r["answer"]}], "n": i}
            for i, r in enumerate(train[4800:5600])]
    rows[3]["messages"] = []
    p["chats"].write_text("".join(json.dumps(r) + "\n" for r in rows))

    (p["run"] / "generations").mkdir(parents=True)
    syn = _synthetic_rows(test[:700])
    pl.DataFrame(syn[:400]).write_parquet(p["run"] / "generations" / "part-00000.parquet")
    pl.DataFrame(syn[400:]).write_parquet(p["run"] / "generations" / "part-00001.parquet")

    # run-b: topics by name only (natural order), some rows without an id
    (p["run2"] / "generations").mkdir(parents=True)
    syn2 = []
    for i, q in enumerate(test[700:1300]):
        syn2.append({"id": None if i % 23 == 0 else f"b-{i:05d}", "topic": ["t10", "t9", "7", "t1"][i % 4],
                     "status": "ok", "text": f"Q: {q['question']}\nA: {q['answer']}",
                     "messages": [{"role": "user", "content": q["question"]}], "completion": q["answer"]})
    pl.DataFrame(syn2).write_parquet(p["run2"] / "generations" / "part-00000.parquet")
    return p


def _synthetic_rows(qs: list[dict]) -> list[dict]:
    rows = []
    for j, q in enumerate(qs):
        rows.append({
            "id": f"syn-{j:05d}", "round": 1 + j % 2, "topic_id": j % 5, "topic": f"topic {j % 5}",
            "subtopic": "s", "template": "qa" if j % 3 else "story", "model": "m",
            "status": "truncated" if j % 17 == 0 else "ok",
            "text": f"Problem: {q['question']}\nSolution: {q['answer']}",
            "messages": [{"role": "system", "content": "Solve it."}, {"role": "user", "content": q["question"]}],
            "completion": q["answer"],
            "duplicate_of": f"syn-{j - 1:05d}" if j % 19 == 0 else None,
        })
    return rows


def cases(p: dict[str, Path]) -> dict[str, dict]:
    qa = {"path": str(p["qa"]), "name": "qa", "text_template": TEMPLATE}
    web = {"path": str(p["folder"]), "name": "web"}
    run = {"run": str(p["run"]), "name": "syn"}
    run2 = {"run": str(p["run2"]), "name": "syn2"}
    tok = str(p["tok"])
    return {
        "jsonl_multi": {"real": [qa, web], "synthetic": [run, run2], "ratios": ["1:0", "4:1", "1:1"],
                        "total_tokens": 60_000, "seed": 7, "format": "jsonl", "shard_tokens": 20_000,
                        "tokenizer": tok},
        "zst_default_budget": {"real": [qa], "synthetic": [run], "ratio": "2:1", "seed": 3,
                               "format": "jsonl.zst", "shard_tokens": 50_000, "tokenizer": tok},
        "parquet_filters_repeat": {
            "real": [web], "synthetic": [{**run, "filters": {"rounds": [2], "templates": ["qa"]}}],
            "ratios": ["4:1", "1:2"], "total_tokens": 150_000, "allow_repetition": True, "seed": 11,
            "format": "parquet", "shard_tokens": 15_000, "tokenizer": tok},
        "megatron": {"real": [qa], "synthetic": [run, run2], "ratio": "4:1", "total_tokens": 40_000, "seed": 5,
                     "format": "megatron", "shard_tokens": 12_000, "tokenizer": tok},
        "messages_parquet": {
            "real": [{"path": str(p["qa"]), "name": "qa", "user_template": "{question}",
                      "assistant_template": "{answer}"},
                     {"path": str(p["chats"]), "name": "chats", "messages_field": "messages"}],
            "synthetic": [run], "ratio": "2:1", "total_tokens": 20_000, "seed": 2, "layout": "messages",
            "format": "parquet", "tokenizer": str(p["tok_chat"])},
        "text_from_chats": {"real": [{"path": str(p["chats"]), "name": "chats", "messages_field": "messages"}],
                            "synthetic": [run2], "ratio": "3:1", "seed": 9, "format": "jsonl",
                            "shard_tokens": 30_000, "tokenizer": str(p["tok_chat"])},
    }


def content_digest(path: Path) -> str:
    """A digest of what a file holds, independent of the library (and its version) that wrote it:
    a Parquet file's column names and rows, a JSONL file's parsed rows (compressed or not), and
    the bytes of anything else (token ids, a tokenizer copied from the fixtures)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = path.name
    if name.endswith(".parquet"):
        t = pq.read_table(path)
        body = json.dumps({"columns": t.column_names, "rows": t.to_pylist()}, sort_keys=True, default=str)
    elif name.endswith((".jsonl", ".jsonl.zst")):
        if name.endswith(".zst"):
            with pa.input_stream(str(path), compression="zstd") as f:
                data = f.read()
        else:
            data = path.read_bytes()
        body = json.dumps([json.loads(line) for line in data.splitlines() if line.strip()], sort_keys=True)
    else:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(body.encode()).hexdigest()


def digest_output(out: Path) -> dict:
    """Every output file but the manifest, by its content digest."""
    return {str(f.relative_to(out)): content_digest(f)
            for f in sorted(x for x in out.rglob("*") if x.is_file() and x.name != "mix_manifest.json")}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalized_manifest(out: Path, work: Path) -> dict:
    """The manifest with the work folder's absolute path replaced (so that it compares across
    folders) and every recorded sha256 checked against the file it names, then replaced by that
    file's content digest: the manifest must hash the real bytes, but which bytes a library writes
    is not this test's to pin."""
    data = json.loads((out / "mix_manifest.json").read_text(encoding="utf-8"))

    def canon(node):
        if isinstance(node, list):
            return [canon(x) for x in node]
        if not isinstance(node, dict):
            return node
        node = {k: canon(v) for k, v in node.items()}
        if isinstance(node.get("sha256"), str) and isinstance(node.get("path"), str):  # an input file
            path = Path(node["path"])
            assert node["sha256"] == _file_sha256(path), f"manifest hash of {path} is not its bytes' sha256"
            node["sha256"] = content_digest(path)
        elif isinstance(node.get("sha256"), list) and isinstance(node.get("files"), list):  # an output shard
            paths = [out / f for f in node["files"]]
            assert node["sha256"] == [_file_sha256(p) for p in paths], f"manifest hashes of {node['files']}"
            node["sha256"] = [content_digest(p) for p in paths]
        return node

    return json.loads(json.dumps(canon(data)).replace(json.dumps(str(work))[1:-1], "<WORK>"))


def run_case(name: str, cfg: dict, work: Path, out: Path) -> dict:
    from generator.mix import build_mix

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_mix({**cfg, "out": str(out), "cache_dir": str(work / f"cache-{name}")})
    return {"files": digest_output(out), "manifest": normalized_manifest(out, work)}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="synthgen-mix-ref-") as tmp:
        work = Path(tmp)
        p = make_inputs(work / "in")
        ref = {"cases": {}}
        for name, cfg in cases(p).items():
            ref["cases"][name] = run_case(name, cfg, work, work / "out" / name)
            print(f"{name}: {len(ref['cases'][name]['files'])} files")
    REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
