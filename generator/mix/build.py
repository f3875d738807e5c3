"""`build_mix`: load the sources, check every ratio can be met, select, shuffle, write shards and the manifest."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from generator.core import storage
from generator.core.errors import SynthgenError
from generator.mix.apportion import hamilton
from generator.mix.chat import ChatRenderer
from generator.config.mix import MixConfig, mix_config_from_dict
from generator.mix.counting import TokenCounter
from generator.mix.digest import file_sha256
from generator.mix.gather import MixPlan, Spill, shard_tables, spill_selected
from generator.mix.index import IndexContext
from generator.mix.manifest import (MANIFEST_NAME, MixResult, mix_record, prepare_out, prepare_remote_out, run_manifest,
                                    source_accounting, write_manifest)
from generator.mix.output_shards import shard_bounds, write_shard
from generator.config.mix_parsing import parse_ratio, ratio_folder
from generator.mix.preflight import check_sources
from generator.mix.pool import MESSAGE_TYPE, Pool, max_budget, select_kind
from generator.mix.real import index_real
from generator.mix.select import seeded_rng
from generator.mix.sources import SourceIndex
from generator.mix.synthetic import index_synthetic
from generator.mix.tokcache import default_cache_dir
from generator.mix.tokens import TokenizerInfo, load_tokenizer


class RepetitionWarning(UserWarning):
    """A mix repeats documents (only with allow_repetition: true)."""


def build_mix(config: MixConfig | dict, *, out: str | Path | None = None, base_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> MixResult:
    """Build every ratio of `config` into `out` (default config.out); returns the manifest.

    Relative paths in a dict config resolve against `base_dir` (default: the working directory).
    Raises SynthgenError when a ratio cannot be met; warns (RepetitionWarning) when it repeats data."""
    if isinstance(config, dict):
        config = mix_config_from_dict(config, base_dir)
    elif base_dir is not None:
        config = config.resolved(base_dir)
    cfg = config
    say = log or (lambda _msg: None)
    out_dir = out if out is not None else cfg.out
    if out_dir is None:
        raise SynthgenError("set out: the folder the mix is written to (--out)")
    remote = storage.is_url(out_dir)
    out_dir = out_dir if remote else Path(out_dir).expanduser()
    check_sources(cfg)  # every source, before the tokenizer loads or a row is read
    # remote shards are downloaded here, and a remote mix is built here first: the token cache, the
    # spill file and memory-mapped token files need a local disk (TMPDIR chooses which)
    with tempfile.TemporaryDirectory(prefix="synthgen-mix-") as tmp:
        local_out = Path(tmp) / "out" if remote else out_dir
        manifest = _build(cfg, out_dir, local_out, Path(tmp) / "sources", say)
        if remote:
            say(f"uploading the mix to {out_dir}")
            storage.upload_tree(local_out, out_dir, last=MANIFEST_NAME)  # the manifest last: it marks a whole mix
    return MixResult(out=out_dir, manifest=manifest)


def _build(cfg: MixConfig, out_dir: Path | str, local_out: Path, stage: Path, say: Callable[[str], None]) -> dict:
    """The mix written into the local folder `local_out` (`out_dir` itself, unless that is a URL)."""
    tok = load_tokenizer(cfg.tokenizer, cfg.eos_token)
    chat = ChatRenderer(tok)
    stats = {"cache_hits": 0, "cache_misses": 0, "tokens_counted": 0}
    sources = _index_sources(cfg, tok, chat, stats, say, stage)
    decontamination = None
    if cfg.decontaminate is not None:
        from generator.config.decontaminate import load_decontaminate
        from generator.core.benchmarks import load_index
        from generator.mix.decontam import decontaminate_sources

        dcfg, bench = load_decontaminate(cfg.decontaminate)
        decontamination = decontaminate_sources(sources, load_index(bench, dcfg.ngram),
                                                refuse=cfg.contaminated == "refuse")
        say("decontamination: " + ", ".join(f"{n}: {r['contaminated']} of {r['documents']} documents dropped"
                                            for n, r in decontamination.items()))
    pool = Pool(sources)
    avail = {"real": pool.available("real"), "synthetic": pool.available("synthetic")}
    say(f"available: {avail['real']:,} real tokens, {avail['synthetic']:,} synthetic tokens "
        f"({stats['cache_hits']} files from the token cache, {stats['cache_misses']} counted)")

    ratios = cfg.ratio_list()
    if cfg.total_tokens is not None:
        budget = cfg.total_tokens
    else:
        budget = min(max_budget(pool, r) for r in ratios)
        if budget <= 0:
            raise SynthgenError(f"no tokens to mix: real sources have {avail['real']:,} tokens, synthetic "
                                f"sources {avail['synthetic']:,} after filters")
    warn_msgs = _check_ratios(cfg, pool, budget, say)  # every ratio, before anything is written

    if local_out == out_dir:
        prepare_out(out_dir, cfg.overwrite)
    else:
        prepare_remote_out(out_dir, cfg.overwrite)
        local_out.mkdir(parents=True)
    final, out_dir = out_dir, local_out
    plans = [_plan(cfg, pool, budget, r, out_dir, say) for r in ratios]
    say("reading the selected documents")
    spill = Spill(out_dir / f".mix-spill-{os.getpid()}.arrows", pa.large_string() if cfg.layout == "text"
                  else MESSAGE_TYPE)
    mixes = []
    try:
        spill_selected([p for p, _, _ in plans], pool, cfg.layout, spill)
        table_of = shard_tables([p for p, _, _ in plans], pool, cfg.layout, spill)
        for plan, kind_budget, targets in plans:
            plan.folder.mkdir(parents=True, exist_ok=True)
            shards = [_write_one(plan, k, table_of(plan, k), sources, pool, cfg, tok, out_dir)
                      for k in range(len(plan.bounds))]
            folder = str(plan.folder.relative_to(out_dir)) if plan.folder != out_dir else "."
            where = final if folder == "." else storage.join(final, folder)
            say(f"ratio {plan.ratio}: wrote {len(shards)} shard(s) for {where}")
            per_source = source_accounting(pool, plan.sel, plan.lengths, targets)
            mixes.append(mix_record(plan.ratio, folder, budget, kind_budget, plan.sel, per_source, shards,
                                    cfg.format))
    finally:
        spill.close()

    manifest = run_manifest(cfg, budget, tok, chat, sources, stats, mixes, warn_msgs)
    if decontamination is not None:
        manifest["decontamination"] = decontamination
    write_manifest(out_dir, manifest)
    return manifest


def _index_sources(cfg: MixConfig, tok: TokenizerInfo, chat: ChatRenderer, stats: dict,
                   say: Callable[[str], None], stage: Path | None = None) -> list[SourceIndex]:
    """Read every source once: rows kept, tokens per row (counted, or from the token cache)."""
    counter = TokenCounter(tok)
    ctx = IndexContext(tok=tok, chat=chat, counter=counter, stats=stats, layout=cfg.layout,
                       cache_dir=(cfg.cache_dir or default_cache_dir()).expanduser(), say=say, stage_dir=stage)
    say(f"counting tokens with {counter.method}")
    sources: list[SourceIndex] = []
    try:
        for rs in cfg.real:
            say(f"reading real source {rs.display_name()} ({rs.path})")
            sources.append(index_real(rs, ctx))
        for ss in cfg.synthetic:
            say(f"reading synthetic source {ss.display_name()} ({ss.run})")
            sources.append(index_synthetic(ss, ctx))
    finally:
        counter.close()
    return sources


def _check_ratios(cfg: MixConfig, pool: Pool, budget: int, say: Callable[[str], None]) -> list[str]:
    """Raise when a ratio cannot be met; the repetition warnings (also issued) otherwise."""
    avail = {"real": pool.available("real"), "synthetic": pool.available("synthetic")}
    warn_msgs: list[str] = []
    for r in cfg.ratio_list():
        rw, sw = parse_ratio(r)
        need = dict(zip(("real", "synthetic"), hamilton(budget, [rw, sw])))
        for kind in ("real", "synthetic"):
            if need[kind] > avail[kind]:
                if not cfg.allow_repetition or avail[kind] == 0:
                    cap = max_budget(pool, r)
                    fix = (f"lower total_tokens to {cap:,}, or set allow_repetition: true" if avail[kind]
                           else f"add {kind} data or change the ratio")
                    raise SynthgenError(
                        f"ratio {r} with total_tokens {budget:,} needs {need[kind]:,} {kind} tokens but the "
                        f"{kind} sources have {avail[kind]:,}; {fix}")
                factor = need[kind] / avail[kind]
                msg = (f"ratio {r}: {kind} tokens repeated {factor:.3f}x ({need[kind]:,} needed, "
                       f"{avail[kind]:,} unique) because allow_repetition is true")
                warn_msgs.append(msg)
                warnings.warn(msg, RepetitionWarning, stacklevel=4)  # the caller of build_mix (via _build)
                say("warning: " + msg)
    return warn_msgs


def _plan(cfg: MixConfig, pool: Pool, budget: int, r: str, out_dir: Path, say: Callable[[str], None]
          ) -> tuple[MixPlan, dict, list[dict]]:
    """One ratio's selection in output order, its side budgets and its per-stratum targets."""
    rw, sw = parse_ratio(r)
    kind_budget = dict(zip(("real", "synthetic"), hamilton(budget, [rw, sw])))
    say(f"ratio {r}: selecting {kind_budget['real']:,} real + {kind_budget['synthetic']:,} synthetic tokens")
    sel_parts, targets = [], []
    for kind in ("real", "synthetic"):
        if kind_budget[kind] > 0:
            ids, t = select_kind(pool, kind, kind_budget[kind], cfg.seed, cfg.allow_repetition)
            sel_parts.append(ids)
            targets += t
    sel = np.concatenate(sel_parts) if sel_parts else np.zeros(0, dtype=np.int64)
    sel = np.sort(sel, kind="stable")  # canonical order before the seeded shuffle
    sel = sel[seeded_rng(cfg.seed, "shuffle", r).permutation(len(sel))]
    lengths = pool.n_tokens[sel]
    folder = out_dir if len(cfg.ratio_list()) == 1 and cfg.ratio is not None else out_dir / ratio_folder(r)
    return MixPlan(r, folder, sel, lengths, shard_bounds(lengths, cfg.shard_tokens)), kind_budget, targets


def _write_one(plan: MixPlan, k: int, table: pa.Table, sources: list[SourceIndex], pool: Pool, cfg: MixConfig,
               tok: TokenizerInfo, out_dir: Path) -> dict:
    """Write shard k of a mix; its manifest entry."""
    a, b = plan.bounds[k]
    lengths = plan.lengths[a:b]
    files = write_shard(plan.folder / f"part-{k:05d}", cfg.format, table, lengths, tok)
    is_real = np.array([sources[i].kind == "real" for i in pool.source_idx[plan.sel[a:b]]], dtype=bool)
    return {
        "file": str(files[0].relative_to(out_dir)),
        "files": [str(f.relative_to(out_dir)) for f in files],
        "docs": int(b - a), "tokens": int(lengths.sum()),
        "real_tokens": int(lengths[is_real].sum()),
        "synthetic_tokens": int(lengths[~is_real].sum()),
        "sha256": [file_sha256(f) for f in files],
    }
