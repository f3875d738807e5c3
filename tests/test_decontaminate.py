"""Decontamination: benchmark items planted in a scripted run's answers and in a seed file are all
found (verbatim, lightly reworded, inside longer text), a clean control is not, `reject` and
`regenerate` act like other rejections, the counts agree in the manifest, `synthgen report` and the
card hook, and the index is built once and then read from the cache."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.benchmarks import BenchmarkSource, load_index
from generator.core.errors import SpecError
from generator.core.ngram_index import Item, NgramIndex, normalize
from generator.engine.executors.local import LocalExecutor
from generator.testing.fake import FakeBackend

ITEMS = [
    ("q1", "A farmer has seventeen sheep and all but nine run away through a hole in the fence, "
           "so how many sheep does the farmer have left at the end of the day?"),
    ("q2", "Maria buys three notebooks for four dollars each and a pen for two dollars, and she pays "
           "with a twenty dollar bill; how much change does Maria receive from the cashier?"),
    ("q3", "A train leaves the station at nine in the morning travelling sixty miles per hour and "
           "arrives at its destination at one in the afternoon; how far did the train travel?"),
]
CLEAN = "Photosynthesis turns light into chemical energy that plants store as sugar for later growth."


def reworded(text: str) -> str:
    """Case, punctuation and one word changed: what a paraphrasing generator often does."""
    return text.replace("station", "depot").upper().replace(",", "").replace(";", " -")


PLANTED = {"verbatim": ITEMS[0][1], "reworded": reworded(ITEMS[2][1]),
           "inside": f"Here is a problem for you to solve today. {ITEMS[1][1]} Think step by step and show work."}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))


def bench_file(proj: Path) -> Path:
    path = proj / "bench" / "mini.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "question": q, "answer": "42"}) + "\n" for i, q in ITEMS))
    return path


def write_spec(proj: Path, action: str = "flag", extra: str = "", check: str = "[final]") -> Path:
    bench_file(proj)
    spec = proj / "spec.yaml"
    base = spec.read_text().replace("  - template: card\n", "")  # free-text answers only
    spec.write_text(base + f"""decontaminate:
  benchmarks:
    - {{name: mini, path: bench/mini.jsonl, fields: [question], id_field: id}}
  check: {check}
  action: {action}
{extra}""")
    return spec


def planted_backend(kinds: dict[str, str]) -> FakeBackend:
    """Answers: a planted text for the first attempt of the records named in `kinds`, clean otherwise."""
    def respond(r):  # ids: RID#TRY (single stage) or RID/STAGE/ATTEMPT/SAMPLE#TRY (pipeline)
        head, tries = r.id.split("#")[0], int(r.id.rsplit("#", 1)[1])
        rid, *rest = head.split("/")
        first = tries == 1 and (not rest or rest[1] == "1")
        kind = kinds.get(rid)
        return PLANTED[kind] if kind and first else f"{CLEAN} ({rid} {tries})"
    return FakeBackend(responder=respond)


def run_planted(spec_path: Path, out: Path):
    spec = load_spec(spec_path)
    from generator.engine.planner import plan_spec

    _, records = plan_spec(spec)
    ids = [r.id for r in records]
    kinds = dict(zip(ids, ["verbatim", "reworded", "inside"]))
    res = run(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: planted_backend(kinds)),
              score=False)
    frame = pl.read_parquet(sorted((out / "generations").glob("*.parquet")))
    return res, frame, kinds


def test_normalisation_and_matching():
    index = NgramIndex.build([Item("mini", i, (q, "42")) for i, q in ITEMS], 13)
    words = lambda t: normalize(t).decode().split()  # noqa: E731
    assert words("Janet\u2019s ducks, LAY 16 e\ufb03cient eggs!") == "janet s ducks lay 16 efficient eggs".split()
    assert words("\u00c9T\u00c9 \u2014 x_y \u4e1c\u4eac\u2167") == ["\u00e9t\u00e9", "x", "y", "\u4e1c\u4eacviii"]
    for kind, text in PLANTED.items():
        hits = index.match(text)
        assert hits, kind
        assert hits[0].benchmark == "mini" and len(hits[0].ngram.split()) == 13
    assert index.match(PLANTED["verbatim"])[0].item_id == "q1"
    assert index.match(PLANTED["verbatim"])[0].overlap == 1.0
    assert 0 < index.match(PLANTED["reworded"])[0].overlap < 1.0
    assert index.match(CLEAN * 5) == []
    assert index.stats().short == 3  # the answers ("42") are too short to have a 13-gram
    # texts are scanned in batches: the results do not depend on which texts share one
    many = [CLEAN] * 500 + [PLANTED["inside"]] + [CLEAN] * 500
    assert [bool(h) for h in index.match_many(many)] == [t == PLANTED["inside"] for t in many]


LONG = ("Antidisestablishmentarianism notwithstanding, the extraordinarily uncharacteristically "
        "incomprehensible counterrevolutionaries reorganised eight notebooks 12345678 and ninety "
        "thousand pneumonoultramicroscopicsilicovolcanoconiosis cases before breakfast")


def test_every_scan_path_gives_the_same_hits(monkeypatch):
    """Words of 1 to 45 bytes (8-byte reads and their masks), ASCII batches read raw and batches
    with other characters normalised text by text, batch boundaries anywhere: the same hits."""
    index = NgramIndex.build([Item("mini", i, (q,)) for i, q in [*ITEMS, ("long", LONG)]], 13)
    texts = [LONG.upper().replace(",", " ;"), f"{CLEAN} {LONG} {CLEAN}", CLEAN * 3, "", None,
             " ".join(LONG.split()[:12]), *PLANTED.values()]
    want = [["long"], ["long"], [], [], [], [], ["q1"], ["q3"], ["q2"]]
    accented = [f"{t} caf\u00e9" if t else t for t in texts]  # the whole batch leaves the ASCII path
    for batch_bytes in (1, 200, 1 << 20):
        monkeypatch.setattr("generator.core.ngram_index._BATCH_BYTES", batch_bytes)
        for case, expected in ((texts, want), (accented, want), (texts[::-1], want[::-1])):
            got = [[h.item_id for h in hits] for hits in index.match_many(case)]
            assert got == expected, (batch_bytes, case)


def test_a_hash_hit_is_confirmed_word_for_word():
    """Every window hash of the text is in the index, but the stored words differ: no hit."""
    built = NgramIndex.build([Item("mini", i, (q,)) for i, q in ITEMS], 13)
    assert built.match(ITEMS[0][1])
    other = b" ".join(w[::-1] + b"x" for w in built.seg_text[0].split())  # other words, the hashes as built
    texts = [other, *built.seg_text[1:]]
    index = NgramIndex(13, built.benchmarks, built.items, built.seg_item, texts, built.keys, built.owner_off,
                       built.owner_seg, built.owner_pos, built.seg_ngrams, built.short)
    assert index.match(ITEMS[0][1]) == []
    assert [h.item_id for h in index.match(ITEMS[1][1])] == ["q2"]


def test_flag_marks_planted_answers_and_counts_agree(proj, tmp_path):
    res, frame, kinds = run_planted(write_spec(proj), tmp_path / "run")
    assert frame.height == len(frame["id"].unique())  # still one row per record
    hits = {r["id"]: json.loads(r["contamination"]) for r in frame.iter_rows(named=True) if r["contamination"]}
    assert set(hits) == set(kinds)
    want = {"verbatim": "q1", "reworded": "q3", "inside": "q2"}
    for rid, kind in kinds.items():
        h = hits[rid][0]
        assert (h["benchmark"], h["item_id"], h["field"]) == ("mini", want[kind], "final")
        assert len(h["ngram"].split()) == 13 and 0 < h["overlap"] <= 1
    assert set(frame["status"]) == {"ok"}
    section = res.manifest["decontamination"]
    assert section["hits"] == {"rows": 3, "benchmarks": {"mini": {"rows": 3, "items": 3}}}
    assert section["final"] == {"records": frame.height, "contaminated": 3, "rejected": 0}
    from generator.export.card import decontamination_counts

    assert decontamination_counts(res.manifest) == {"benchmarks": {"mini": {"rows": 3, "items": 3}},
                                                    "contaminated": 3, "rejected": 0, "records": frame.height,
                                                    "ngram": 13, "action": "flag"}
    from click.testing import CliRunner

    from generator.cli.main import main as cli

    out = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "mini" in out.output and "decontamination" in out.output
    # the dataset card counts the same hits
    card = (tmp_path / "run" / "README.md").read_text()
    assert "## Decontamination" in card
    assert f"- final records with a hit: 3 of {frame.height} (0 rejected or regenerated)" in card
    assert "| mini | 3 | 3 |" in card


def test_reject_ends_contaminated_records(proj, tmp_path):
    res, frame, kinds = run_planted(write_spec(proj, "reject"), tmp_path / "run")
    rejected = frame.filter(pl.col("status") == "rejected")
    assert set(rejected["id"]) == set(kinds)
    assert rejected["contamination"].null_count() == 0
    assert res.manifest["counts"]["status"]["rejected"] == 3
    assert res.manifest["decontamination"]["final"]["rejected"] == 3


def test_regenerate_single_stage_gets_a_clean_answer(proj, tmp_path):
    res, frame, kinds = run_planted(write_spec(proj, "regenerate"), tmp_path / "run")
    assert frame.height == len(frame["id"].unique())
    again = frame.filter(pl.col("id").is_in(list(kinds)))
    assert set(again["status"]) == {"ok"} and again["contamination"].null_count() == len(kinds)
    assert all(CLEAN in t for t in again["text"])
    assert res.manifest["decontamination"]["final"]["contaminated"] == 0


PIPELINE = """stages:
  - name: answer
    kind: generate
    template: qa
  - name: check
    kind: verify
    check: regex
    target: answer
    pattern: "."
"""


def test_regenerate_in_a_pipeline_keeps_the_rejected_attempt(proj, tmp_path):
    text = (proj / "spec.yaml").read_text()
    head = text.split("templates:")[0]
    tail = "models:" + text.split("models:")[1]
    (proj / "spec.yaml").write_text(head + PIPELINE + tail)
    spec = write_spec(proj, "regenerate", "  on_reject: {regenerate: answer, max_attempts: 2}\n")
    res, frame, kinds = run_planted(spec, tmp_path / "run")
    for rid in kinds:
        rows = frame.filter(pl.col("id") == rid).sort("attempts")
        assert rows["status"].to_list() == ["rejected", "ok"]
        assert rows["decided_by"][0] == "decontaminate" and rows["contamination"][0] is not None
        assert rows["contamination"][1] is None
    section = res.manifest["decontamination"]
    assert section["hits"]["rows"] == 3 and section["final"]["contaminated"] == 0
    assert res.manifest["pipeline"]["decided_by"].get("decontaminate", 0) == 0


def test_seed_rows_are_checked(proj, tmp_path):
    seeds = proj / "seeds.jsonl"
    rows = [{"problem": PLANTED["verbatim"]}, {"problem": PLANTED["inside"]}, {"problem": CLEAN}]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (proj / "spec.yaml").read_text().replace("  - tree: mini", "  - seeds: seeds.jsonl")
    (proj / "spec.yaml").write_text(text.replace("generations_per_topic: 2", "generations_per_topic: 1"))
    spec = write_spec(proj, check="[seeds]")
    res = run(load_spec(spec), out=tmp_path / "run", executor=LocalExecutor(
        backend_factory=lambda c, **_: FakeBackend(responder=lambda r: CLEAN)), score=False)
    frame = pl.read_parquet(sorted((tmp_path / "run" / "generations").glob("*.parquet")))
    flagged = {r["topic_id"]: json.loads(r["contamination"]) for r in frame.iter_rows(named=True)
               if r["contamination"]}
    assert len(flagged) == 2 and {h[0]["item_id"] for h in flagged.values()} == {"q1", "q2"}
    assert all(h[0]["field"] == "seeds" for h in flagged.values())
    assert res.manifest["decontamination"]["hits"]["rows"] == 2


def test_index_is_built_once_and_cached(proj, tmp_path):
    src = [BenchmarkSource("mini", bench_file(proj), ("question",), "id")]
    first = load_index(src, 13)
    again = load_index(src, 13)
    assert not first.cached and again.cached
    assert [h.item_id for h in again.match(PLANTED["inside"])] == ["q2"]
    assert len(list((tmp_path / "cache" / "decontam").glob("*.npz"))) == 1
    load_index(src, 12)  # another n-gram size is another index
    assert len(list((tmp_path / "cache" / "decontam").glob("*.npz"))) == 2


def test_bad_config_is_one_line_with_position(proj):
    spec = write_spec(proj, "flag")
    text = spec.read_text()
    spec.write_text(text.replace("fields: [question]", "fields: [questoin]"))
    from generator.engine.planner import resolve_spec
    from generator.engine.pipeline.execute import compile_spec

    with pytest.raises(SpecError, match="no column questoin"):
        compile_spec(resolve_spec(load_spec(spec)))
    spec.write_text(text.replace("action: flag", "action: flagg"))
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    assert "spec.yaml:" in str(exc.value) and "action" in str(exc.value)
    spec.write_text(text.replace("bench/mini.jsonl", "/tmp/../etc/passwd"))
    with pytest.raises(SpecError, match="outside the project"):
        compile_spec(resolve_spec(load_spec(spec)))


def test_decontaminate_command_on_a_run_and_a_mix(proj, tmp_path):
    from click.testing import CliRunner

    from generator.cli.main import main as cli

    run_planted(write_spec(proj), tmp_path / "run")
    conf = proj / "decon.yaml"
    conf.write_text("benchmarks:\n  - {name: mini, path: bench/mini.jsonl, fields: [question], id_field: id}\n")
    report = tmp_path / "report.json"
    out = CliRunner().invoke(cli, ["decontaminate", str(tmp_path / "run"), "--config", str(conf), "--json", str(report)])
    assert out.exit_code == 1, out.output
    got = json.loads(report.read_text())["targets"][0]
    assert got["contaminated"] == 3 and got["benchmarks"] == {"mini": {"documents": 3, "items": 3}}
    # a mix's sources, real data included: one planted document among clean ones
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": t}) + "\n" for t in [CLEAN, PLANTED["inside"], CLEAN + " again"]))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"real:\n  - path: {real}\nratio: '1:0'\n")
    out = CliRunner().invoke(cli, ["decontaminate", "--mix", str(mix), "--benchmark",
                                   f"mini={proj / 'bench' / 'mini.jsonl'}", "--id-field", "id"])
    assert out.exit_code == 1 and "1 of 3 documents contaminated" in out.output and "item q2" in out.output
    real.write_text(json.dumps({"text": CLEAN}) + "\n")
    out = CliRunner().invoke(cli, ["decontaminate", "--mix", str(mix), "--config", str(conf)])
    assert out.exit_code == 0 and "0 of 1 documents" in out.output
    out = CliRunner().invoke(cli, ["decontaminate", str(tmp_path / "nope"), "--config", str(conf)])
    assert out.exit_code != 0 and out.exit_code != 1


def test_decontaminate_mix_reads_sources_as_the_mix_does(proj, tmp_path):
    """`--mix`: a folder of JSONL.zst and Parquet read through the mix's reader, a text template and
    a chat field made into documents as the mix makes them; a direct .jsonl.zst target streams too."""
    import pyarrow as pa
    from click.testing import CliRunner

    from generator.cli.main import main as cli

    bench_file(proj)
    conf = proj / "decon.yaml"
    conf.write_text("benchmarks:\n  - {name: mini, path: bench/mini.jsonl, fields: [question], id_field: id}\n")
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    qa = [{"question": CLEAN, "answer": "1"}, {"question": ITEMS[0][1], "answer": "8"},
          {"question": CLEAN, "answer": "2"}]
    with pa.output_stream(str(web / "sub" / "a.jsonl.zst"), compression="zstd") as f:
        f.write("".join(json.dumps(r) + "\n" for r in qa).encode())
    pl.DataFrame([{"question": reworded(ITEMS[2][1]), "answer": "3"},
                  {"question": CLEAN, "answer": "4"}]).write_parquet(web / "b.parquet")
    chats = tmp_path / "chats.jsonl"
    chat = lambda u: [{"role": "user", "content": u}, {"role": "assistant", "content": "ok"}]  # noqa: E731
    chats.write_text("".join(json.dumps({"messages": chat(u)}) + "\n" for u in (CLEAN, PLANTED["inside"])))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"real:\n  - {{path: {web}, name: web, text_template: \"{{question}}\\n{{answer}}\"}}\n"
                   f"  - {{path: {chats}, name: chats, messages_field: messages}}\nratio: '1:0'\n")
    report = tmp_path / "r.json"
    out = CliRunner().invoke(cli, ["decontaminate", "--mix", str(mix), "--config", str(conf), "--json", str(report)])
    assert out.exit_code == 1, out.output
    got = {t["target"]: t for t in json.loads(report.read_text())["targets"]}
    assert (got[str(web)]["documents"], got[str(web)]["contaminated"]) == (5, 2)
    # files in name order (b.parquet, sub/a.jsonl.zst), rows numbered across them, as in the mix's lineage
    assert {(e["id"], e["item_id"]) for e in got[str(web)]["examples"]} == {("web:0", "q3"), ("web:3", "q1")}
    assert [(e["id"], e["item_id"]) for e in got[str(chats)]["examples"]] == [("chats:1", "q2")]
    out = CliRunner().invoke(cli, ["decontaminate", str(web / "sub" / "a.jsonl.zst"), "--field", "question",
                                   "--config", str(conf)])
    assert out.exit_code == 1 and "1 of 3 documents contaminated" in out.output and "a.jsonl.zst:1" in out.output
    mix.write_text(f"real:\n  - {{path: {web}, name: web, text_field: body}}\nratio: '1:0'\n")
    out = CliRunner().invoke(cli, ["decontaminate", "--mix", str(mix), "--config", str(conf)])
    assert out.exit_code == 2 and "no field body" in out.output and "text_field" in out.output, out.output
