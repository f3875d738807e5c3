"""`synthgen mix`: export real:synthetic training mixes (see docs/mix.md)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from generator.core.errors import SynthgenError


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def _preference(synthetics: tuple[str, ...], out: Path | None, fmt: str | None) -> None:
    from generator.mix.preference import write_preference

    if not synthetics or out is None:
        raise click.UsageError("--layout preference needs --synthetic RUN (a pipeline run with a compare judge) "
                               "and --out FOLDER")
    try:
        m = write_preference([Path(p) for p in synthetics], out, fmt or "jsonl")
    except SynthgenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out / m['file']}: {m['rows']} preference rows")
    for src in m["sources"]:
        if src["skipped"]:
            click.echo(f"  {src['run']}: skipped {json.dumps(src['skipped'])}", err=True)


@click.command("mix")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--real", "reals", multiple=True, metavar="PATH",
              help="Real data: a .parquet/.jsonl/.jsonl.zst file or a folder of them (repeatable).")
@click.option("--text-field", default=None, help="Column with the text of --real sources (default: text).")
@click.option("--text-template", default=None, help="Build the text of --real rows, e.g. '{question}\\n{answer}'.")
@click.option("--messages-field", default=None, help="Column with a chat (list of {role, content}) in --real sources.")
@click.option("--synthetic", "synthetics", multiple=True, metavar="RUN",
              help="A synthgen run folder, local or an fsspec URL such as s3://bucket/runs/NAME (repeatable).")
@click.option("--ratio", "ratio_opts", multiple=True, metavar="R:S",
              help="real:synthetic by tokens, e.g. 4:1; repeat for several mixes in one pass.")
@click.option("--total-tokens", default=None, help="Token budget per mix (e.g. 2000000 or 2M).")
@click.option("--tokenizer", default=None, help="Tokenizer folder, tokenizer.json or model alias.")
@click.option("--seed", type=int, default=None)
@click.option("--allow-repetition/--no-allow-repetition", default=None,
              help="Repeat documents (whole epochs + a remainder) when a ratio needs more than there is.")
@click.option("--layout", type=click.Choice(["text", "messages", "preference"]), default=None,
              help="preference: prompt/chosen/rejected rows from --synthetic pipeline runs with a compare judge.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "jsonl.zst", "parquet", "megatron"]), default=None)
@click.option("--shard-tokens", default=None, help="Tokens per shard (e.g. 50M).")
@click.option("--out", default=None, metavar="FOLDER",
              help="Output folder, local or an fsspec URL (built in a local temporary folder, then uploaded).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an earlier mix in --out.")
@click.option("--decontaminate", "decon", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A decontamination config (docs/decontamination.md): match every document against its benchmarks.")
@click.option("--contaminated", type=click.Choice(["refuse", "drop"]), default=None,
              help="With --decontaminate: refuse the mix (default) or drop the contaminated documents.")
@click.option("--quiet", "-q", is_flag=True, help="Only print errors and the summary.")
def mix(config, reals, text_field, text_template, messages_field, synthetics, ratio_opts, total_tokens, tokenizer,
        seed, allow_repetition, layout, fmt, shard_tokens, out, overwrite, decon, contaminated, quiet):
    """Build real:synthetic training mixes with exact token counts.

    CONFIG is a mix YAML file (or a spec with a `mix:` section). Options override its values;
    --real/--synthetic/--ratio replace its lists. Without CONFIG, the options describe the mix.

    \b
    synthgen mix mix.yaml
    synthgen mix --real data/web --synthetic runs/r1 --ratio 4:1 --ratio 1:1 --out mixes/
    """
    from generator.config.mix import load_mix_file, mix_config_from_dict
    from generator.mix import RepetitionWarning, build_mix, ratio_text
    from generator.mix.preflight import check_sources

    from generator.core import storage

    if out is not None and not storage.is_url(out):
        out = Path(out).absolute()
    if layout == "preference":
        if out is not None and storage.is_url(out):
            raise click.UsageError("--layout preference writes to a local --out folder")
        _preference(synthetics, out, fmt)
        return
    try:
        data: dict = {}
        located, prefix = None, ()
        if config is not None:  # paths inside resolve against the file's folder, options against the cwd
            file_cfg, located, prefix = load_mix_file(config)
            data = file_cfg.model_dump(exclude_unset=True)
        fields = {k: v for k, v in (("text_field", text_field),
                                    ("text_template", text_template.replace("\\n", "\n") if text_template else None),
                                    ("messages_field", messages_field)) if v}
        if reals:
            data["real"] = [{"path": Path(p).absolute(), **fields} for p in reals]
        elif fields:
            if not data.get("real"):
                raise click.UsageError("--text-field/--text-template/--messages-field apply to --real sources; add "
                                       "--real PATH, or real: sources in the mix file")
            for r in data["real"]:
                r.update(fields)
        if synthetics:
            data["synthetic"] = [{"run": p if storage.is_url(p) else Path(p).absolute()} for p in synthetics]
        if ratio_opts:
            data.pop("ratio", None)
            data.pop("ratios", None)
            if len(ratio_opts) == 1:
                data["ratio"] = ratio_opts[0]
            else:
                data["ratios"] = list(ratio_opts)
        for key, value in (("total_tokens", total_tokens), ("tokenizer", tokenizer), ("seed", seed),
                           ("allow_repetition", allow_repetition), ("layout", layout), ("format", fmt),
                           ("shard_tokens", shard_tokens), ("out", out), ("overwrite", overwrite),
                           ("decontaminate", decon.absolute() if decon else None), ("contaminated", contaminated)):
            if value is not None:
                data[key] = value
        cfg = mix_config_from_dict(data)
        # sources are checked before anything is read; what an option replaced has no line in the file
        replaced = {key for key, given in (("real", reals or fields), ("synthetic", synthetics),
                                           ("tokenizer", tokenizer), ("out", out)) if given}
        check_sources(cfg, located, prefix, replaced)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RepetitionWarning)  # also printed through the log
            result = build_mix(cfg, log=None if quiet else _echo)
    except SynthgenError as exc:
        raise click.ClickException(str(exc)) from None

    m = result.manifest
    click.echo(f"wrote {result.manifest_path}")
    for mx in m["mixes"]:
        t = mx["tokens"]
        ach = mx["achieved_ratio"]
        ach_s = ("real only" if t["real"] else "empty") if ach is None else f"achieved {ach:.4f}:1"
        click.echo(f"  {ratio_text(mx['ratio']):>7}  {mx['folder']:<14} {t['total']:>14,} tokens "
                   f"(real {t['real']:,}, synthetic {t['synthetic']:,}; {ach_s}) "
                   f"in {len(mx['shards'])} shard(s)")
    for w in m.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
