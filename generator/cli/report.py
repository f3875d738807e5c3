"""`synthgen report RUN [--out report.html]`: the rounds trajectory of a run folder."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Also write an HTML report with plots here.")
@click.option("--top", type=int, default=25, show_default=True, help="Cells shown in the allocation table.")
def report(run_dir, out, top):
    """Show how a rounds run spent its budget: diversity against generations, allocation per cell.

    For a `synthgen probe` folder: the probe's table, its differences against the spread, and the
    plot (with --out, an HTML page with the table and the plot)."""
    from rich.console import Console

    from generator.feedback.rounds import load_rounds
    from generator.feedback.rounds_report import html, tables

    from generator.cli.output import echo, show_table

    console = Console(emoji=False, highlight=False)
    if (Path(run_dir) / "probe.json").is_file():  # a `synthgen probe` folder: its tables (docs/probe.md)
        from generator.probe.report import print_report

        print_report(run_dir, console, out)
        return
    rounds = load_rounds(run_dir)
    if not rounds:
        raise click.ClickException(f"{run_dir} has no finished rounds (rounds/round-001.json); "
                                   "it was not run with a `rounds:` section, or round 1 has not finished")
    for t in tables(rounds, top=top):
        if t.row_count:
            show_table(t, console)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(html(run_dir, rounds))
        echo(f"wrote {out}")
