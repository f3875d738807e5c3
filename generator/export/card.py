"""Dataset cards: `README.md` with the YAML front matter the Hugging Face Hub reads, and a body
generated from the run (spec, models, counts, diversity scores, pass rates, usage, versions).

The same builder writes the card of a run folder (after every `synthgen run`) and of an export."""
from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any, Callable

import polars as pl
import yaml

from generator.core import storage
from generator.core.run_layout import SCORES
from generator.export.provenance import decontamination_counts, decontamination_lines, default_license, provenance_lines

SIZE_BOUNDS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
               (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
               (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (10 ** 12, "100B<n<1T")]
FENCE = "~~~~~~"  # user YAML may hold ``` fences; this one it is unlikely to


def size_category(n: int) -> str:
    for bound, name in SIZE_BOUNDS:
        if n < bound:
            return name
    return "n>1T"


def front_matter(*, data_files: dict[str, str] | None, license: str, task_categories: list[str], n_rows: int,
                 languages: list[str], tags: list[str], pretty_name: str | None = None) -> str:
    meta: dict[str, Any] = {}
    if pretty_name:
        meta["pretty_name"] = pretty_name
    meta.update({
        "license": license, "language": list(languages), "task_categories": list(task_categories),
        "size_categories": [size_category(n_rows)], "tags": list(tags),
    })
    if data_files:
        meta["configs"] = [{"config_name": "default",
                            "data_files": [{"split": s, "path": p} for s, p in data_files.items()]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _text(value: Any) -> str:
    """User text in markdown: shown exactly, never interpreted as HTML."""
    return html.escape(str(value), quote=False)


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "unknown"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def scores_lines(run_dir: Path) -> list[str]:
    path = storage.join(run_dir, SCORES)
    try:
        scores = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, ValueError):
        return []
    lines = ["| metric | value | per group |", "|---|---:|---|"]
    for entry in (scores.get("datasets") or {}).values():
        for name, res in (entry.get("metrics") or {}).items():
            value = res.get("value")
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else _text(value)
            groups = ", ".join(f"{_text(g)} {v:.3g}" for g, v in sorted((res.get("per_group") or {}).items())
                               if isinstance(v, (int, float)))
            lines.append(f"| {_text(name)} | {shown} | {groups} |")
    return lines if len(lines) > 2 else []


def pass_rate_lines(manifest: dict, frame: pl.DataFrame | None) -> list[str]:
    """Per-stage pass rates: from the manifest's `stages` when present, else Boolean columns."""
    rates: dict[str, tuple[int, int]] = {}
    for name, st in (manifest.get("stages") or {}).items():
        if isinstance(st, dict) and isinstance(st.get("passed"), int) and isinstance(st.get("total"), int):
            rates[name] = (st["passed"], st["total"])
    if not rates and frame is not None:
        for col, dtype in frame.schema.items():
            if dtype == pl.Boolean and col != "structured":
                s = frame[col].drop_nulls()
                rates[col] = (int(s.sum()), s.len())
    if not rates:
        return []
    lines = ["| stage | passed | of | rate |", "|---|---:|---:|---:|"]
    for name, (p, n) in rates.items():
        lines.append(f"| {_text(name)} | {p:,} | {n:,} | {p / n:.1%} |" if n else f"| {_text(name)} | 0 | 0 | - |")
    return lines


def difficulty_lines(frame: pl.DataFrame | None) -> list[str]:
    """Per-problem pass rates of a `keep:` verify stage (`<stage>.pass_rate`): how many problems,
    their mean, and how many fall in each fifth of [0, 1] (one value per record: its final row)."""
    if frame is None:
        return []
    cols = [c for c, t in frame.schema.items() if c.endswith(".pass_rate") and t == pl.Float64]
    lines = []
    for col in cols:
        per = frame.filter(pl.col(col).is_not_null())
        if "final" in per.columns:  # each record's deciding attempt, once
            per = per.filter(pl.col("final"))
        if per.is_empty():
            continue
        rates = per[col]
        bins = [int(((rates >= lo / 5) & ((rates < (lo + 1) / 5) if lo < 4 else (rates <= 1))).sum()) for lo in range(5)]
        if not lines:
            lines = ["| stage | problems | mean pass rate | 0-0.2 | 0.2-0.4 | 0.4-0.6 | 0.6-0.8 | 0.8-1 |",
                     "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines.append(f"| {_text(col.removesuffix('.pass_rate'))} | {per.height:,} | {rates.mean():.3f} | "
                     + " | ".join(f"{b:,}" for b in bins) + " |")
    return lines


def band_lines(manifest: dict) -> list[str]:
    """The bands of `kind: difficulty` stages (the manifest's `pipeline.difficulty`): what was kept."""
    out = []
    for name, d in ((manifest.get("pipeline") or {}).get("difficulty") or {}).items():
        if not isinstance(d, dict):
            continue
        lo, hi = (d.get("band") or [None, None])[:2]
        solvers = d.get("solvers") or {}
        who = ", ".join(f"`{_text(m)}` ({_text(c)})" for c, m in solvers.items())
        rule = (f"the strong solver's pass rate at least {d.get('strong_min')} and the weak one's in "
                f"[{lo}, {hi}]" if len(solvers) > 1 else f"pass rate in [{lo}, {hi}]")
        out.append(f"- `{_text(name)}`: {d.get('k')} tries per problem by {who}, checked by {_text(d.get('check'))}; "
                   f"kept when {rule}: {d.get('in_band', 0):,} of {d.get('problems', 0):,} problems")
    return [""] + out if out else []


def body(manifest: dict, run_dir: Path, *, title: str, about: list[str], frame: pl.DataFrame | None,
         usage: dict | None) -> list[str]:
    spec = manifest.get("spec") or {}
    counts = manifest.get("counts") or {}
    described = manifest.get("models") or {}
    lines = [f"# {_text(title)}", "", _text((spec.get("description") or "").strip() or "(no description in the spec)"),
             "", *about, "", "## How it was generated",
             f"- spec: `{_text(spec.get('name') or manifest.get('name'))}`, seed {manifest.get('seed')}, "
             f"spec hash `{manifest.get('spec_hash')}`",
             f"- generated: {_when(manifest.get('created_at'))} to {_when(manifest.get('updated_at'))}",
             f"- records planned: {counts.get('planned', 0)}; generated: {counts.get('generated', 0)}; "
             f"status counts: {_text(json.dumps(counts.get('status', {}), sort_keys=True))}",
             f"- topic cells: {manifest.get('topic_cells', 0)}; templates: "
             f"{_text(', '.join(sorted(manifest.get('templates') or {})))}"]
    lines.append("- models:")
    for m in spec.get("models") or []:
        d = described.get(m.get("name"), {})
        extra = ", ".join(f"{k} {_text(d[k])}" for k in ("backend", "device", "vllm_version", "description") if d.get(k))
        lines.append(f"  - `{_text(m.get('name'))}` ({extra or _text(m.get('backend', 'vllm'))})")
    scores = scores_lines(run_dir)
    if scores:
        lines += ["", "## Diversity scores", "", *scores]
    rates = pass_rate_lines(manifest, frame)
    if rates:
        lines += ["", "## Pass rates", "", *rates]
    lines += ["", *provenance_lines(manifest)]
    decon = decontamination_lines(manifest)  # present once the run checked for benchmark items
    if decon:
        lines += ["", *decon]
    difficulty = difficulty_lines(frame) + band_lines(manifest)
    if difficulty:
        lines += ["", "## Difficulty (per-problem pass rates of the samples)", "", *difficulty]
    if usage is not None:
        from generator.export.usage import usage_markdown

        lines += ["", "## Usage and cost", "", *usage_markdown(usage)]
    lines += ["", "## Spec", "", FENCE + "yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).rstrip(),
              FENCE, "", "## Versions", "", FENCE + "json", json.dumps(manifest.get("versions", {}), indent=2), FENCE]
    return lines


RUN_ABOUT = [
    "## Columns",
    "Each row of `generations/*.parquet` is one model answer with its full lineage: topic cell, persona "
    "ids, template name and content hash, the template's drawn choices, model, sampling parameters and "
    "seed, round, the prompt messages, the raw completion, the training `text`, token counts, finish "
    "reason and a status (`ok`, `truncated`, `empty`, `invalid_json`, `error`). Only `ok` rows are "
    "training data; the others are kept so nothing is silently dropped. `synthgen export` writes "
    "train/test splits in text, chat or preference layouts.",
]


def write_run_card(run_dir: Path, manifest: dict, personas: int | None = None,
                   before: Callable[[], None] | None = None) -> None:
    """The run folder's own card. Its front matter names no data files: a run folder grows as it
    resumes, and `datasets` caches by the card's file patterns; `synthgen export` writes the loadable
    folder. `before()` runs just before the card lands (the run's lock check)."""
    from generator.export.usage import compute_usage

    counts = manifest.get("counts") or {}
    about = list(RUN_ABOUT)
    if personas is not None:
        about.append(f"\nPersonas in the pool: {personas}.")
    about += ["", "## Load it", "```python", "import polars as pl",
              f"df = pl.read_parquet({json.dumps(str(run_dir) + '/generations/*.parquet')})"
              ".filter(pl.col('status') == 'ok')",
              f"# or: datasets.load_dataset('parquet', data_files={json.dumps(str(run_dir) + '/generations/*.parquet')})",
              "```"]
    name = manifest.get("name") or storage.name_of(run_dir)
    lid, why = default_license(manifest)  # no warning here: `synthgen export` warns when it matters
    about.append(f"\nLicence: `{_text(lid or 'other')}` ({_text(why)}).")
    head = front_matter(data_files=None, license=lid or "other",
                        task_categories=["text-generation"], n_rows=int(counts.get("generated") or 0),
                        languages=["en"], tags=["synthetic", "synthgen"])
    text = head + "\n".join(body(manifest, run_dir, title=f"{name}: synthetic data generated with synthgen",
                                 about=about, frame=None, usage=compute_usage(run_dir))) + "\n"
    storage.write_atomic(storage.join(run_dir, "README.md"), lambda tmp: tmp.write_text(text), before=before)


def mask_lines(opts: Any, res: Any) -> list[str]:
    """The `## Training masks` section of a `messages` export."""
    side = ("the user simulator's side: its prompt, then its own turns as `assistant` (trained) and the "
            "assistant's answers as `user`; rows that are not conversations with a user simulator are left out"
            if opts.side == "user" else "the assistant's side")
    how = {"per-message": "Masks are per message only: no chat template was rendered (export with "
                          "`--chat-template MODEL` for rendered `text` with character `train_spans`).",
           "generation": f"`text` is each row rendered with `{_text(opts.chat_template)}`'s chat template and "
                         f"`train_spans` the [start, end) character ranges its `{{% generation %}}` marks "
                         f"(what `apply_chat_template(..., return_assistant_tokens_mask=True)` masks).",
           "prefix": f"`text` is each row rendered with `{_text(opts.chat_template)}`'s chat template, which has "
                     f"no `{{% generation %}}` marks; `train_spans` are the [start, end) character ranges of the "
                     f"`train` messages, found by rendering each conversation prefix (a trained turn runs from "
                     f"the end of its generation prompt to the end of the turn)."}[res.masks]
    return ["## Training masks", "",
            f"Each message has `train`: true for the assistant's turns (tool calls included), false for "
            f"system prompts, user and simulated-user turns and tool results. This export is from {side}.", "",
            how]


def write_export_card(to: Path, run_dir: Path, manifest: dict, gens: pl.DataFrame, opts: Any, res: Any,
                      seed: int) -> None:
    """README.md of an exported dataset folder (`res`: the `dataset.ExportResult` being written)."""
    from generator.export.rows import LAYOUT_ABOUT
    from generator.export.usage import compute_usage

    what, tasks, layout_tags = LAYOUT_ABOUT[opts.layout]
    name = manifest.get("name") or storage.name_of(run_dir)
    filt = opts.filters.describe()
    about = ["## This dataset", "", f"Layout `{opts.layout}`. {what}", "",
             "| split | rows |", "|---|---:|", *[f"| {s} | {n:,} |" for s, n in res.splits.items()], "",
             f"Columns: {', '.join(f'`{_text(c)}`' for c in res.columns)}.", "",
             f"Split: seeded (seed {seed}), stratified by `{_text(opts.stratify_by)}` so each group keeps about "
             f"the test ratio ({opts.test_ratio:g}).",
             f"Rows kept by: {_text('; '.join(filt)) if filt else 'all rows'}."]
    if any(res.dropped.values()):
        about.append("Rows left out: " + _text(", ".join(f"{k}: {v}" for k, v in res.dropped.items() if v)) + ".")
    about.append(f"Licence: `{_text(res.license)}` ({_text(res.license_note)}).")
    if opts.layout == "messages":
        about += ["", *mask_lines(opts, res)]
    about += ["", "## Load it", "```python", "from datasets import load_dataset",
              "ds = load_dataset(\"path/to/this/folder\")  # or the Hub repo id", "```"]
    head = front_matter(data_files=res.data_files, license=res.license,
                        task_categories=list(opts.task_categories) or tasks, n_rows=sum(res.splits.values()),
                        languages=list(opts.languages), pretty_name=name,
                        tags=["synthetic", "synthgen", *layout_tags, *opts.tags])
    text = head + "\n".join(body(manifest, run_dir, title=name, about=about, frame=gens,
                                 usage=compute_usage(run_dir))) + "\n"
    storage.write_atomic(storage.join(to, "README.md"), lambda tmp: tmp.write_text(text))
