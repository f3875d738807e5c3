"""What a probe reads: the arms (one per mix of `synthgen mix` output), held-out text, GSM8K problems."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from generator.core.errors import SynthgenError
from generator.core.run_layout import generation_files, read_parquet
from generator.mix.manifest import MANIFEST_NAME
from generator.config.mix_parsing import ratio_text
from generator.mix.reader import scan_file
from generator.mix.real import real_files
from generator.mix.output_shards import load_shard_rows
from generator.mix.sources import normalize_messages
from generator.mix.row_templates import render_template
from generator.config.mix_parsing import template_fields
from generator.probe.evaluate import gold_number


@dataclass
class Arm:
    """One mix to train on: its folder, what the manifest says about it, and its documents."""

    name: str
    ratio: str
    mix_dir: Path
    folder: Path
    layout: str
    tokens: dict
    synthetic_fraction: float
    manifest: dict
    rows: list[dict] = field(default_factory=list)

    def synthetic_texts(self) -> list[str]:
        return [_row_text(r) for r in self.rows if r.get("kind") == "synthetic"]


def _row_text(r: dict) -> str:
    if r.get("text") is not None:
        return str(r["text"])
    msgs = r.get("messages") or []
    return "\n".join(str(m.get("content", "")) for m in msgs if m.get("role") == "assistant")


def _manifest(mix_dir: Path) -> dict:
    try:
        return json.loads((mix_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SynthgenError(f"{mix_dir / MANIFEST_NAME}: cannot read ({exc}); rebuild the mix with `synthgen mix`")


def discover_arms(paths: list[Path]) -> list[Arm]:
    """Each path is a `synthgen mix` out folder (all its ratios become arms) or one ratio folder of it."""
    arms: list[Arm] = []
    for p in paths:
        p = Path(p)
        if (p / MANIFEST_NAME).is_file():
            mix_dir, only = p, None
        elif (p.parent / MANIFEST_NAME).is_file():
            mix_dir, only = p.parent, p.name
        else:
            raise SynthgenError(f"{p}: no {MANIFEST_NAME} here or in the parent folder; pass the --out folder "
                                f"of `synthgen mix` (or one of its ratio-* folders)")
        m = _manifest(mix_dir)
        if m.get("format") == "megatron":
            raise SynthgenError(f"{mix_dir}: Megatron mixes hold token ids, not text; rebuild the mix with "
                                f"--format parquet (or jsonl) to probe it")
        mixes = m.get("mixes", [])
        if only is not None:
            mixes = [x for x in mixes if x.get("folder") == only]
            if not mixes:
                raise SynthgenError(f"{p}: not one of the mixes in {mix_dir / MANIFEST_NAME}; pass {mix_dir} "
                                    f"for all of them")
        for x in mixes:
            folder = mix_dir / x["folder"]
            name = x["folder"] if x["folder"] != "." else f"ratio-{ratio_text(x['ratio']).replace(':', '_')}"
            arms.append(Arm(name=name, ratio=ratio_text(x["ratio"]), mix_dir=mix_dir, folder=folder,
                            layout=m.get("layout", "text"), tokens=x["tokens"],
                            synthetic_fraction=float(x.get("achieved_synthetic_fraction") or 0.0),
                            manifest=x))
    if not arms:
        raise SynthgenError("no mixes to probe; pass at least one `synthgen mix` out folder")
    if len({a.name for a in arms}) < len(arms):  # two mix folders with the same ratios: keep names apart
        for a in arms:
            a.name = f"{a.mix_dir.name}/{a.name}"
    if len({a.name for a in arms}) < len(arms):
        raise SynthgenError("the same mix is given twice; pass each mix folder once")
    layouts = {a.layout for a in arms}
    if len(layouts) > 1:
        raise SynthgenError(f"the mixes mix layouts ({', '.join(sorted(layouts))}); probe text mixes and "
                            f"messages mixes separately")
    for a in arms:
        a.rows = []
        for shard in a.manifest.get("shards", []):
            f = a.mix_dir / shard["file"]
            if not f.is_file():
                raise SynthgenError(f"{f}: shard listed in {a.mix_dir / MANIFEST_NAME} is missing; rebuild the mix")
            a.rows += load_shard_rows(f)
        if not a.rows:
            raise SynthgenError(f"{a.folder}: the mix has no documents")
    return arms


def _hash_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()


def _synthetic_candidates(arms: list[Arm]) -> list[tuple[str, dict]]:
    """(id, row) of every synthetic row the mixes could have drawn, under each source's filters."""
    seen: dict[str, dict] = {}
    for mix_dir in dict.fromkeys(a.mix_dir for a in arms):
        m = _manifest(mix_dir)
        for src in m.get("sources", []):
            if src.get("kind") != "synthetic" or not src.get("run"):
                continue
            flt = src.get("filters") or {}
            for f in generation_files(src["run"]):
                for r in read_parquet(f).to_dicts():
                    if flt.get("statuses") is not None and r.get("status") not in flt["statuses"]:
                        continue
                    if not flt.get("include_duplicates") and r.get("duplicate_of"):
                        continue
                    if flt.get("rounds") and r.get("round") not in flt["rounds"]:
                        continue
                    if flt.get("templates") and r.get("template") not in flt["templates"]:
                        continue
                    seen.setdefault(str(r["id"]), r)
    return list(seen.items())


def held_out_synthetic(arms: list[Arm], n: int, seed: int) -> tuple[list[dict], dict]:
    """Synthetic rows no arm trains on. Unused rows first; if too few, rows taken out of every arm alike."""
    if n <= 0:
        return [], {"docs": 0}
    used = {r["lineage_id"] for a in arms for r in a.rows if r.get("kind") == "synthetic"}
    cands = sorted(_synthetic_candidates(arms), key=lambda kv: _hash_key(seed, kv[0]))
    unused = [kv for kv in cands if kv[0] not in used]
    chosen = unused[:n]
    removed: set[str] = set()
    if len(chosen) < n:
        extra = [kv for kv in cands if kv[0] in used][: n - len(chosen)]
        removed = {k for k, _ in extra}
        chosen += extra
        for a in arms:
            a.rows = [r for r in a.rows if r.get("lineage_id") not in removed]
    info = {"docs": len(chosen), "unused_rows": len(unused[:n]), "removed_from_training": len(removed),
            "rule": "synthetic rows no mix selected, ordered by sha256(seed|id); when too few, the rest are "
                    "taken out of every arm's training documents"}
    return [r for _, r in chosen], info


def synthetic_eval_items(rows: list[dict], layout: str) -> list[tuple[list[dict] | None, str]]:
    """(prompt messages or None, target text) pairs: whole text, or the assistant's answer to the prompt."""
    items = []
    for r in rows:
        if layout == "text":
            if r.get("text"):
                items.append((None, str(r["text"])))
        else:
            msgs = normalize_messages(r.get("messages"))
            if msgs is not None and r.get("completion"):
                items.append((msgs, str(r["completion"])))
    return items


def _read_table(path: Path) -> pl.DataFrame:
    frames = [df for f in real_files(path) for _, df, _ in scan_file(f)]
    frames = [f for f in frames if f.height]
    if not frames:
        raise SynthgenError(f"{path}: no rows")
    return pl.concat(frames, how="diagonal_relaxed")


def real_eval_items(path: Path, layout: str, n: int, text_field: str | None, text_template: str | None,
                    user_template: str | None, assistant_template: str | None) -> list[tuple[list[dict] | None, str]]:
    """The first n rows of the user's held-out real set, as (prompt, target) pairs."""
    if not Path(path).exists():
        raise SynthgenError(f"{path}: held-out real set not found; pass --eval-real FILE (e.g. GSM8K test.jsonl)")
    df = _read_table(Path(path)).head(n)
    cols = df.columns
    qa = "question" in cols and "answer" in cols

    def render(tpl: str, opt: str) -> list[str | None]:
        missing = [f for f in template_fields(tpl) if f not in cols]
        if missing:
            raise SynthgenError(f"{path}: no field(s) {', '.join(missing)} for {opt} {tpl!r} (fields: "
                                f"{', '.join(cols)}); set {opt} to use these fields")
        return render_template(tpl, {c: df.get_column(c).to_list() for c in template_fields(tpl)})

    if layout == "text":
        if text_template:
            texts = render(text_template, "--eval-text-template")
        elif (text_field or "text") in cols:
            texts = df.get_column(text_field or "text").to_list()
        elif qa and not text_field:
            texts = render("{question}\n{answer}", "--eval-text-template")
        else:
            raise SynthgenError(f"{path}: no field '{text_field or 'text'}' (fields: {', '.join(cols)}); set "
                                f"--eval-text-field or --eval-text-template")
        return [(None, str(t)) for t in texts if t]
    user = user_template or ("{question}" if qa else None)
    asst = assistant_template or ("{answer}" if qa else None)
    if not user or not asst:
        raise SynthgenError(f"{path}: set --eval-user-template and --eval-assistant-template (fields: "
                            f"{', '.join(cols)}) to evaluate a messages-layout probe")
    us, as_ = render(user, "--eval-user-template"), render(asst, "--eval-assistant-template")
    return [([{"role": "user", "content": u}], a) for u, a in zip(us, as_) if u and a]


def gsm8k_problems(path: Path, n: int) -> list[dict]:
    """The first n GSM8K-style rows: question, answer text, and the gold number after '####'."""
    if not Path(path).exists():
        raise SynthgenError(f"{path}: GSM8K file not found; pass --gsm8k PATH/test.jsonl")
    df = _read_table(Path(path))
    if "question" not in df.columns or "answer" not in df.columns:
        raise SynthgenError(f"{path}: GSM8K rows need 'question' and 'answer' fields (fields: "
                            f"{', '.join(df.columns)})")
    out = []
    for r in df.head(n).to_dicts():
        gold = gold_number(str(r["answer"]))
        if gold is not None:
            out.append({"question": str(r["question"]), "gold": gold})
    return out
