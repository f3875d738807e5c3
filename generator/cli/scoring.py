"""Click commands `score`, `compare`, `dedup` (registered into the main `synthgen` group).

Standalone: `python -m scoring.cli score PATH ...`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from generator.cli.options import RunPath
from generator.cli.output import echo, show_table
from generator.core.storage import name_of

BY_CHOICES = ["topic", "persona", "template", "model"]


def check_metrics(ctx, param, value):
    """Unknown metric names fail before any data is read, as one line."""
    if not value:
        return value
    from scoring.metrics import available

    names = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in names if m not in available()]
    if unknown or not names:
        raise click.BadParameter(f"unknown metric {', '.join(unknown) or repr(value)}; choose from "
                                 f"{', '.join(available())}")
    return value


def _common(f):
    opts = [
        click.option("--text-column", default="text", show_default=True,
                     help="Column with the text; join columns with '+', e.g. question+answer."),
        click.option("--by", type=click.Choice(BY_CHOICES), default=None, help="Per-group scores."),
        click.option("--metrics", default=None, callback=check_metrics,
                     help="Comma-separated metric names (default: all cheap ones)."),
        click.option("--sample", type=int, default=None, help="Score a seeded sample of N rows."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--embedder", type=click.Choice(["static", "minilm", "hash"]), default="static",
                     show_default=True),
        click.option("--token-budget", type=int, default=None,
                     help="Whitespace tokens per group for lexical metrics (default: smallest group)."),
        click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the scores as JSON."),
        click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write an HTML report."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _write(result: dict, out: str | None, report: str | None, console: Console) -> None:
    from scoring.api import write_report

    if out:
        Path(out).write_text(json.dumps(result, indent=2))
        echo(f"scores written to {out}")
    if report:
        write_report(result, report)
        echo(f"report written to {report}")


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=RunPath(exists=True, shards=True))
@_common
def score_cmd(paths, text_column, by, metrics, sample, seed, embedder, token_budget, out, report):
    """Score the diversity of run folders (local, or an fsspec URL such as s3://bucket/runs/NAME),
    Parquet, CSV or JSONL(.zst) files."""
    from scoring.api import score

    console = Console(emoji=False, highlight=False)
    res = score(list(paths), metrics=metrics, by=by, sample=sample, seed=seed, text_column=text_column,
                token_budget=token_budget, embedder=embedder, with_map=bool(report))
    for p, ds in res["datasets"].items():
        t = Table(title=f"{p} ({ds['n_texts']} texts)")
        t.add_column("metric")
        t.add_column("value", justify="right")
        t.add_column("spread", justify="right")
        t.add_column("dir")
        groups = sorted(ds.get("groups", {}))[:8]
        for g in groups:
            t.add_column(g[:16], justify="right")
        for n, m in ds["metrics"].items():
            d = ds["direction"].get(n)
            t.add_row(n, _fmt(m["value"]), _fmt(m["spread"], 2), {True: "↑", False: "↓", None: ""}[d],
                      *[_fmt(m["per_group"].get(g)) for g in groups])
        show_table(t, console)
        if len(ds.get("groups", {})) > 8:
            echo(f"({len(ds['groups'])} groups; all of them are in --out / --report)")
    _write(res, out, report, console)


@click.command("compare")
@click.argument("paths", nargs=-1, required=True, type=RunPath(exists=True, shards=True))
@_common
def compare_cmd(paths, text_column, by, metrics, sample, seed, embedder, token_budget, out, report):
    """Compare datasets side by side (differences against the first, with significance). Each is a
    run folder (local, or an fsspec URL), a Parquet, CSV or JSONL(.zst) file."""
    from scoring.api import compare

    if len(paths) < 2:
        raise click.UsageError("compare needs at least two paths; give two or more run folders or files")
    console = Console(emoji=False, highlight=False)
    res = compare(list(paths), metrics=metrics, by=by, sample=sample, seed=seed, text_column=text_column,
                  token_budget=token_budget, embedder=embedder, with_map=bool(report))
    t = Table(title=f"compare (baseline {res['baseline']}, {res['n_docs']} docs, {res['token_budget']} tokens)")
    t.add_column("metric")
    t.add_column("dir")
    for i, p in enumerate(paths):
        t.add_column(name_of(p) if i == 0 else f"{name_of(p)} (Δ)", justify="right")
    for row in res["table"]:
        cells = []
        for i, p in enumerate(res["datasets"]):
            v = _fmt(row["values"][p])
            s = row["spreads"][p]
            v += f" ±{_fmt(s, 2)}" if s is not None else ""
            if i:
                d = row["diffs"].get(p)
                if d:
                    v += f" ({d['diff']:+.3g}{'*' if d['significant'] else ''})"
            cells.append(v)
        t.add_row(row["metric"], {True: "↑", False: "↓", None: ""}[row["higher_is_diverse"]], *cells)
    show_table(t, console)
    echo("Δ marked *: larger than twice the combined spread.")
    _write(res, out, report, console)


@click.command("dedup")
@click.argument("run", type=RunPath(exists=True, file_okay=False, shards=True))
@click.option("--threshold", type=float, default=0.8, show_default=True, help="MinHash Jaccard threshold.")
@click.option("--embeddings/--no-embeddings", default=False, help="Also mark semantic duplicates.")
@click.option("--text-column", default="text", show_default=True)
def dedup_cmd(run, threshold, embeddings, text_column):
    """Mark duplicates in a run (a folder or an fsspec URL): adds `duplicate_of` to
    generations/*.parquet (never drops rows)."""
    from scoring.api import dedup_run

    stats = dedup_run(run, threshold=threshold, embeddings=embeddings, text_column=text_column)
    t = Table(title=f"dedup {run}")
    t.add_column("")
    t.add_column("value", justify="right")
    for k, v in stats.items():
        t.add_row(k, _fmt(v))
    show_table(t)


@click.group()
def cli():
    """synthgen scoring commands."""


cli.add_command(score_cmd)
cli.add_command(compare_cmd)
cli.add_command(dedup_cmd)

COMMANDS = [score_cmd, compare_cmd, dedup_cmd]

if __name__ == "__main__":
    cli()
