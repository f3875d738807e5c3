"""`synthgen report RUN [--out report.html]`: the rounds trajectory and pipeline stages of a run folder."""
from __future__ import annotations

import json
from pathlib import Path

import click

from generator.cli.options import RunPath
from generator.core import storage


def _pipeline_table(manifest: dict):
    from rich.table import Table

    section = manifest.get("pipeline") or {}
    t = Table(title="pipeline stages (each attempt counted once)")
    for col in ("stage", "kind", "ran", "passed", "rejected", "pass rate", "decided (final)"):
        t.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    decided = section.get("decided_by", {})
    for name in section.get("order", []):
        r = section.get("stages", {}).get(name, {"ran": 0, "passed": 0, "rejected": 0, "pass_rate": None})
        rate = "-" if r["pass_rate"] is None else f"{r['pass_rate']:.1%}"
        t.add_row(name, section.get("kinds", {}).get(name, ""), str(r["ran"]), str(r["passed"]), str(r["rejected"]),
                  rate, str(decided.get(name, 0)))
    return t


@click.command("report")
@click.argument("run_dir", metavar="RUN", type=RunPath(file_okay=False, exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Also write an HTML report with plots here.")
@click.option("--top", type=int, default=25, show_default=True, help="Cells shown in the allocation table.")
def report(run_dir, out, top):
    """Show how a run went: usage and cost per model, stage and session, per-stage pass and
    rejection rates of a pipeline, and for a rounds run diversity against generations and the
    allocation per cell. RUN is a folder or an fsspec URL such as s3://bucket/runs/NAME.

    For a `synthgen probe` folder: the probe's table, its differences against the spread, and the
    plot (with --out, an HTML page with the table and the plot)."""
    from rich.console import Console

    from generator.feedback.rounds import load_rounds
    from generator.feedback.rounds_report import html, tables

    from generator.cli.output import echo, show_table

    console = Console(emoji=False, highlight=False)
    # a `synthgen probe` folder: its tables (docs/probe.md); probes write local folders only
    if not storage.is_url(run_dir) and (Path(run_dir) / "probe.json").is_file():
        from generator.probe.report import print_report

        print_report(run_dir, console, out)
        return
    from generator.core.run_layout import read_manifest

    manifest = read_manifest(run_dir)
    if manifest:  # usage and cost of every run (live while it is generated)
        from generator.cli.export import usage_notes, usage_table
        from generator.export.usage import compute_usage

        u = compute_usage(run_dir)
        if u["models"]:
            show_table(usage_table(u), console)
            for line in usage_notes(u):
                echo(line)
    if manifest.get("pipeline"):
        show_table(_pipeline_table(manifest), console)
        counts = manifest.get("counts", {})
        echo(f"records: {counts.get('generated', 0)} / {counts.get('planned', 0)}; final status "
             f"{json.dumps(counts.get('status', {}))}; rows (every attempt) "
             f"{json.dumps(manifest['pipeline'].get('rows_by_status', {}))}")
    decon = manifest.get("decontamination")
    if decon:
        final = decon.get("final", {})
        per = ", ".join(f"{b}: {v['rows']} rows, {v['items']} items" for b, v in decon["hits"]["benchmarks"].items())
        echo(f"decontamination ({decon.get('ngram')}-grams, {decon.get('action')}): {decon['hits']['rows']} rows "
             f"with hits ({per or 'none'}); final records contaminated {final.get('contaminated', 0)}, "
             f"rejected {final.get('rejected', 0)}")
    rounds = load_rounds(run_dir)
    if not rounds:
        if manifest:
            return
        raise click.ClickException(f"{run_dir} has no finished rounds (rounds/round-001.json); "
                                   "it was not run with a `rounds:` section, or round 1 has not finished")
    for t in tables(rounds, top=top):
        if t.row_count:
            show_table(t, console)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(html(run_dir, rounds))
        echo(f"wrote {out}")
