"""The manifest (`mix_manifest.json`): composing it, reading a built mix through it, clearing an earlier mix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generator.core import storage
from generator.core.errors import SynthgenError
from generator.core.files import write_json_atomic
from generator.mix.chat import ChatRenderer
from generator.config.mix import MixConfig
from generator.config.mix_parsing import parse_ratio, ratio_text
from generator.mix.pool import Pool
from generator.mix.sources import SourceIndex
from generator.mix.tokens import TokenizerInfo

MANIFEST_NAME = "mix_manifest.json"
MANIFEST_VERSION = 1


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthgenError(f"out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST_NAME
        if not overwrite:
            raise SynthgenError(f"out folder {out} is not empty; choose another out, or set overwrite: true "
                                f"(--overwrite) to replace an earlier mix there")
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            for mix in old.get("mixes", []):
                for shard in mix.get("shards", []):
                    for f in shard.get("files", []):
                        p = (out / f).resolve()
                        if p.is_file() and out.resolve() in p.parents:
                            p.unlink()
                folder = out / mix.get("folder", ".")
                if folder != out and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            manifest.unlink()
        for stale in out.glob(".mix-spill-*.arrows"):  # left by a mix that was killed while writing
            stale.unlink()
    out.mkdir(parents=True, exist_ok=True)


def prepare_remote_out(out: str, overwrite: bool) -> None:
    """`prepare_out` for a URL: a prefix holding objects is replaced only with overwrite, and then only
    an earlier mix's files (its manifest first: a mix without one is incomplete)."""
    manifest = storage.join(out, MANIFEST_NAME)
    storage.check_writable(out)
    if not storage.is_dir(out):
        return
    if not overwrite:
        raise SynthgenError(f"out {out} already holds files; choose another out, or set overwrite: true "
                            f"(--overwrite) to replace an earlier mix there")
    try:
        old = json.loads(storage.read_bytes(manifest).decode("utf-8"))
    except (FileNotFoundError, ValueError):
        raise SynthgenError(f"out {out} holds files but no readable {MANIFEST_NAME}, so it is not an earlier "
                            f"mix that overwrite may replace; choose another out") from None
    storage.remove(manifest)
    for mix in old.get("mixes", []):
        for shard in mix.get("shards", []):
            for f in shard.get("files", []):
                if ".." not in f.split("/"):  # only files inside out
                    storage.remove(storage.join(out, f))  # files are relative to out


@dataclass
class MixResult:
    out: Path | str  # a local folder, or the URL the mix was uploaded to
    manifest: dict

    @property
    def manifest_path(self) -> Path | str:
        return storage.join(self.out, MANIFEST_NAME)

    def folder(self, ratio: str) -> Path | str:
        """The folder holding the shards of one ratio."""
        want = ratio_text(ratio)
        for m in self.manifest["mixes"]:
            if m["ratio"] == want:
                return self.out if m["folder"] == "." else storage.join(self.out, m["folder"])
        raise KeyError(ratio)


def _ratio_value(real: int, syn: int) -> float | None:
    return None if syn == 0 else real / syn


def source_accounting(pool: Pool, sel: np.ndarray, lengths: np.ndarray, targets: list[dict]) -> list[dict]:
    """Per source (and per topic, synthetic side): targets, tokens and docs taken, repetition."""
    sources = pool.sources
    per_source = []
    tok_by_src = np.bincount(pool.source_idx[sel], weights=lengths, minlength=len(sources)).astype(np.int64)
    docs_by_src = np.bincount(pool.source_idx[sel], minlength=len(sources))
    reps = np.bincount(sel, minlength=len(pool.n_tokens)) if len(sel) else np.zeros(len(pool.n_tokens), int)
    for i, s in enumerate(sources):
        lo, hi = pool.offsets[i], pool.offsets[i + 1]
        entry = {"name": s.name, "kind": s.kind,
                 "target_tokens": sum(t["target"] for t in targets if t["source"] == s.name),
                 "tokens": int(tok_by_src[i]), "docs": int(docs_by_src[i]),
                 "available_tokens": s.available_tokens, "available_docs": s.docs,
                 "unique_tokens": int(pool.n_tokens[lo:hi][reps[lo:hi] > 0].sum()),
                 "max_doc_repeats": int(reps[lo:hi].max()) if hi > lo else 0}
        # tokens per distinct token used (1.0 = nothing repeated), and the share of the source used
        entry["repetition_factor"] = round(entry["tokens"] / entry["unique_tokens"], 6) \
            if entry["unique_tokens"] else 1.0
        entry["fraction_of_available"] = round(entry["unique_tokens"] / s.available_tokens, 6) \
            if s.available_tokens else 0.0
        if s.kind == "synthetic":
            mine = pool.source_idx[sel] == i
            t_tok = np.bincount(pool.topic_codes[sel][mine], weights=lengths[mine],
                                minlength=len(s.topics)).astype(np.int64)
            t_avail = np.bincount(s.topic_codes, weights=s.n_tokens, minlength=len(s.topics)).astype(np.int64)
            tgt = {t["topic"]: t["target"] for t in targets if t["source"] == s.name}
            entry["topics"] = {name: {"available_tokens": int(t_avail[j]), "target_tokens": tgt.get(name, 0),
                                      "tokens": int(t_tok[j])} for j, name in enumerate(s.topics)}
        per_source.append(entry)
    return per_source


def mix_record(ratio: str, folder: str, budget: int, kind_budget: dict, sel: np.ndarray, per_source: list[dict],
               shards: list[dict], fmt: str) -> dict:
    """One ratio's entry in the manifest."""
    rw, sw = parse_ratio(ratio)
    real_tok = sum(e["tokens"] for e in per_source if e["kind"] == "real")
    syn_tok = sum(e["tokens"] for e in per_source if e["kind"] == "synthetic")
    total = real_tok + syn_tok
    mix = {
        "ratio": ratio, "folder": folder,
        "budget_tokens": budget, "target_tokens": kind_budget,
        "tokens": {"total": total, "real": real_tok, "synthetic": syn_tok},
        "docs": {"total": int(len(sel)), "real": int(sum(e["docs"] for e in per_source if e["kind"] == "real")),
                 "synthetic": int(sum(e["docs"] for e in per_source if e["kind"] == "synthetic"))},
        "requested_ratio": None if sw == 0 else float(rw / sw),
        "achieved_ratio": _ratio_value(real_tok, syn_tok),
        "achieved_synthetic_fraction": syn_tok / total if total else 0.0,
        "budget_shortfall_tokens": budget - total,
        "sources": per_source,
        "shards": shards,
    }
    if fmt == "megatron":
        mix["megatron_data_path"] = [x for sh in shards
                                     for x in (str(sh["tokens"]), sh["file"][: -len(".bin")])]
    return mix


def run_manifest(cfg: MixConfig, budget: int, tok: TokenizerInfo, chat: ChatRenderer, sources: list[SourceIndex],
                 stats: dict, mixes: list[dict], warn_msgs: list[str]) -> dict:
    """The whole manifest: settings, tokenizer, counting and seeding rules, sources, and every mix."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "layout": cfg.layout, "format": cfg.format, "shard_tokens": cfg.shard_tokens,
        "total_tokens": {"requested": cfg.total_tokens, "budget": budget,
                         "rule": "as requested" if cfg.total_tokens is not None else
                         "largest budget every ratio reaches without repetition"},
        "allow_repetition": cfg.allow_repetition,
        "tokenizer": {"path": str(tok.path), "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                      "eos_token": tok.eos_token, "eos_id": tok.eos_id,
                      "megatron_dtype": tok.dtype.name if cfg.format == "megatron" else None},
        "token_count": {
            "rule": "ids of the document text encoded with add_special_tokens=False, plus 1 EOS per document",
            "eos_per_document": 1, "eos_token": tok.eos_token,
            "messages_rendering": chat.describe() if cfg.layout == "messages" or any(
                s.messages_field for s in cfg.real) else None,
            "counted_this_run": stats["tokens_counted"], "files_from_cache": stats["cache_hits"],
            "files_counted": stats["cache_misses"]},
        "seeds": {"seed": cfg.seed,
                  "selection": "numpy SeedSequence([seed, sha256('select|kind|source|topic')]) per stratum; "
                               "independent of the ratio, so selections of different ratios nest",
                  "shuffle": "numpy SeedSequence([seed, sha256('shuffle|ratio')]) over the selected documents"},
        "apportionment": "Hamilton (largest remainder): budget -> real/synthetic by the ratio -> sources by "
                         "available tokens -> topic_id (synthetic) by available tokens; documents are whole, "
                         "chosen by seeded shuffle + greedy prefix + best fit, leftover carried to the next "
                         "stratum",
        "sources": [{"name": s.name, "kind": s.kind, **s.description, "available_docs": s.docs,
                     "available_tokens": s.available_tokens, "topics": len(s.topics) if s.kind == "synthetic"
                     else None, "skipped_rows": s.skipped, "files": s.files} for s in sources],
        "mixes": mixes,
        "warnings": warn_msgs,
    }


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Last, atomically and fsynced: a manifest present means a complete mix."""
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
