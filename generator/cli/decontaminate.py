"""`synthgen decontaminate`: match existing data against benchmark sets (docs/decontamination.md)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from generator.core.errors import SynthgenError


@click.command("decontaminate")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML file with the `decontaminate:` section (a spec works too): benchmarks, ngram.")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="NAME=PATH",
              help="A benchmark set (JSONL/JSON/Parquet/CSV file or folder; repeatable), instead of --config.")
@click.option("--fields", default="question", show_default=True, help="--benchmark: comma-separated columns to index.")
@click.option("--id-field", default=None, help="--benchmark: the column holding each item's id.")
@click.option("--ngram", type=int, default=None, help="Words per n-gram (default: the config's, else 13).")
@click.option("--mix", "mix_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also check every source of this mix config, read as `synthgen mix` reads it (real files, "
                   ".jsonl.zst too, with their text settings; synthetic runs).")
@click.option("--field", "text_fields", multiple=True,
              help="Columns holding a TARGET document's text (default: text, else messages).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
def decontaminate(targets, config, benchmarks, fields, id_field, ngram, mix_file, text_fields, json_out):
    """Check run folders, exported datasets or data files (and a mix's sources) against benchmark
    sets, by shared word n-grams (13 normalised words by default), and print the documents that
    repeat benchmark items, per benchmark, with examples.

    Exit status: 0 when nothing matched, 1 when a document repeats a benchmark item, 2 for bad
    input (a missing file, a bad config).

    \b
    synthgen decontaminate runs/r1 --config decontam.yaml
    synthgen decontaminate exports/ds --benchmark gsm8k=../data/gsm8k/test.jsonl --fields question,answer
    """
    from generator.config.decontaminate import load_decontaminate
    from generator.core.benchmarks import BenchmarkError, BenchmarkSource, load_index
    from generator.mix.decontam import mix_targets, scan, target_rows

    if bool(config) == bool(benchmarks):
        raise click.UsageError("give --config FILE or --benchmark NAME=PATH (one of them)")
    if config:
        cfg, sources = load_decontaminate(config)
        n = ngram or cfg.ngram
    else:
        sources = []
        for b in benchmarks:
            name, sep, path = b.partition("=")
            if not sep or not Path(path).exists():
                raise click.UsageError(f"--benchmark {b}: expected NAME=PATH of an existing file or folder")
            sources.append(BenchmarkSource(name, Path(path).resolve(), tuple(f for f in fields.split(",") if f),
                                           id_field))
        n = ngram or 13
    todo = [(str(t), target_rows(t, tuple(text_fields))) for t in targets]
    if mix_file:
        from generator.config.mix import load_mix_file

        todo += mix_targets(load_mix_file(mix_file)[0])
    if not todo:
        raise click.UsageError("nothing to check: give TARGET folders or files, or --mix CONFIG")
    try:
        index = load_index(sources, n)
        reports = [scan(index, label, docs).as_dict() for label, docs in todo]
    except (SynthgenError, BenchmarkError) as exc:
        raise click.ClickException(str(exc)) from None
    for r in reports:
        per = ", ".join(f"{b}: {v['documents']} documents, {v['items']} items" for b, v in r["benchmarks"].items())
        click.echo(f"{r['target']}: {r['contaminated']} of {r['documents']} documents contaminated"
                   + (f" ({per})" if per else ""))
        for ex in r["examples"]:
            click.echo(f"  {ex['id']}: {ex['benchmark']} item {ex['item_id']} ({ex['overlap']:.0%}): {ex['ngram']}")
    if json_out:
        json_out.write_text(json.dumps({"ngram": n, "benchmarks": [s.name for s in sources], "targets": reports},
                                       indent=2))
    if any(r["contaminated"] for r in reports):
        raise SystemExit(1)
