"""`synthgen export` and `synthgen usage`."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from generator.cli.options import RunPath

console = Console(stderr=True)
out = Console()


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), help="Dataset folder to write (a path or an "
              "fsspec URL such as s3://bucket/prefix).")
@click.option("--layout", type=click.Choice(["text", "messages", "preference", "rl"]), default="text",
              show_default=True, help="text: a `text` column (pre-training); messages: chat turns (SFT); preference: "
              "prompt/chosen/rejected; rl: one verifiable problem a row (prompt, reward_model, data_source).")
@click.option("--reasoning", type=click.Choice(["field", "inline", "drop"]), default="field", show_default=True,
              help="messages: a thinking model's reasoning as the assistant turn's `reasoning_content` (field), "
              "inline in <think>...</think> before the answer, or dropped.")
@click.option("--reference", metavar="COLUMN", help="rl: the column of each problem's reference answer (default: "
              "the `<stage>.reference` of the run's `check: reference` stage).")
@click.option("--data-source", metavar="NAME", help="rl: the `data_source` value (default: the run's name).")
@click.option("--status", multiple=True, default=("ok",), show_default=True,
              help="Keep rows with this status (repeatable).")
@click.option("--template", "templates", multiple=True, help="Keep rows of this template (repeatable).")
@click.option("--round", "rounds", multiple=True, type=int, help="Keep rows of this round (repeatable).")
@click.option("--where", multiple=True, metavar="COLUMN OP VALUE",
              help="Keep rows where a column passes a threshold, e.g. --where 'judge_score>=4' "
              "(OP: >=, <=, >, <, ==, !=; repeatable, all must hold).")
@click.option("--test-ratio", type=float, default=0.1, show_default=True,
              help="Share of rows in the test split (0: train only).")
@click.option("--seed", type=int, help="Seed of the split (default: the run's seed).")
@click.option("--stratify-by", default="topic_id", show_default=True,
              help="Column the split is stratified by.")
@click.option("--prompt-column", default="prompt", show_default=True, help="preference: the prompt column.")
@click.option("--response-a-column", default="response_a", show_default=True,
              help="preference: the first response column.")
@click.option("--response-b-column", default="response_b", show_default=True,
              help="preference: the second response column.")
@click.option("--choice-column", default="choice", show_default=True,
              help="preference: the judge's choice (a/A/1/response_a or b/B/2/response_b; other values "
              "leave the row out).")
@click.option("--license", "license_", help="Licence id for the card (e.g. cc-by-4.0). Default: what the inputs "
              "allow: the one licence models and seed data share, else the most restrictive of theirs; `other` "
              "with a warning when an input's licence is not known.")
@click.option("--side", type=click.Choice(["assistant", "user"]), default="assistant", show_default=True,
              help="messages: whose turns are trained on. user: the user simulator's side of each conversation "
              "(its turns as `assistant`), for training user simulators.")
@click.option("--chat-template", "chat_template", metavar="MODEL", help="messages: also write `text` (each row "
              "through MODEL's chat template) and `train_spans` (the trained character ranges); MODEL is a model "
              "alias, a local model folder or a cached Hub id.")
@click.option("--language", "languages", multiple=True, default=("en",), show_default=True,
              help="Language code for the card (repeatable).")
@click.option("--task-category", "task_categories", multiple=True,
              help="Hub task category (repeatable; default: text-generation).")
@click.option("--tag", "tags", multiple=True, help="Extra card tag (repeatable).")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=500_000, show_default=True,
              help="Most rows in one Parquet file.")
@click.option("--overwrite", is_flag=True, help="Replace data/ and README.md in an existing --to folder.")
@click.option("--push-to-hub", "repo", metavar="REPO", help="Then upload the folder as Hub dataset REPO "
              "(token from HF_TOKEN or `hf auth login`).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
def export(run_dir, to, layout, reasoning, reference, data_source, status, templates, rounds, where, test_ratio, seed,
           stratify_by, prompt_column, response_a_column, response_b_column, choice_column, license_, side,
           chat_template, languages,
           task_categories, tags, rows_per_file, overwrite, repo, private):
    """Export RUN as a dataset folder (Parquet splits + README.md card) that datasets.load_dataset reads."""
    from generator.core import storage
    from generator.export.dataset import ExportOptions, export_run
    from generator.export.rows import Filters, Preference

    if repo and storage.is_url(to):
        raise click.UsageError(f"--push-to-hub uploads a local folder; export --to a local folder, not {to}")

    opts = ExportOptions(
        layout=layout, filters=Filters(status=tuple(status), templates=tuple(templates), rounds=tuple(rounds),
                                       where=tuple(where)),
        test_ratio=test_ratio, seed=seed, stratify_by=stratify_by,
        preference=Preference(prompt=prompt_column, response_a=response_a_column, response_b=response_b_column,
                              choice=choice_column),
        license=license_, side=side, chat_template=chat_template, languages=tuple(languages),
        task_categories=tuple(task_categories), tags=tuple(tags), rows_per_file=rows_per_file,
        overwrite=overwrite, reasoning=reasoning, reference=reference, data_source=data_source)
    res = export_run(run_dir, to, opts)
    splits = ", ".join(f"{s} {n:,}" for s, n in res.splits.items())
    out.print(Text(f"exported {sum(res.splits.values()):,} rows ({splits}) as {layout} to {res.path}"))
    out.print(Text(f"licence: {res.license} ({res.license_note})"), style="dim")
    dropped = {k: v for k, v in res.dropped.items() if v}
    if dropped:
        out.print(Text("left out: " + ", ".join(f"{k}: {v}" for k, v in dropped.items())), style="dim")
    if repo:
        from generator.export.hub import push_to_hub

        url = push_to_hub(res.path, repo, private=private)
        out.print(Text(f"pushed to {repo}: {url}"))


@click.command()
@click.argument("run_dir", metavar="RUN", type=RunPath(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the usage as JSON.")
def usage(run_dir, as_json):
    """Model calls, cache hits, tokens, busy time, throughput and cost of RUN: per model, per stage
    and template, and per session (a resumed run sums its sessions). RUN is a folder or an fsspec
    URL such as s3://bucket/runs/NAME. Works while RUN is being generated: it then also shows the
    totals at this rate for the records still to come."""
    from generator.core.run_layout import is_run_folder
    from generator.export.rows import ExportError
    from generator.export.usage import compute_usage

    if not is_run_folder(run_dir):
        raise ExportError(f"{run_dir}: not a run folder (no manifest.json); pass the folder `synthgen run` wrote")
    u = compute_usage(run_dir)
    if as_json:
        click.echo(json.dumps(u, indent=2))
        return
    from generator.cli.output import echo, show_table

    show_table(usage_table(u), out)
    if u.get("endpoints"):
        show_table(endpoints_table(u["endpoints"]), out)
    for line in usage_notes(u):
        echo(line)


def usage_table(u: dict) -> Table:
    """`compute_usage`'s numbers as a table: per model, per stage and template, per session, total."""
    from generator.export.usage import money

    ledger = u["source"] == "ledger"
    thinking = bool(u["total"].get("reasoning_tokens"))  # a column only for runs with a thinking model
    cols = ["model", "group", "calls", *(["cache hits", "errors"] if ledger else []), "prompt tokens",
            "completion tokens", *(["reasoning tokens"] if thinking else []), *(["busy s", "tok/s"] if ledger else []),
            "cost"]
    t = Table(title=f"usage of {u['run']}")
    for col in cols:
        text_col = col in ("model", "group")
        t.add_column(col, justify="left" if text_col else "right", no_wrap=text_col)

    def row(r: dict, group: str) -> None:
        cells = [Text(str(r["model"])), Text(group), f"{r['requests']:,}"]
        if ledger:
            cells += [f"{r.get('cache_hits', 0):,}" if "cache_hits" in r else "", f"{r['errors']:,}" if "errors" in r else ""]
        cells += [f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}"]
        if thinking:
            cells.append(f"{r.get('reasoning_tokens', 0):,}")
        if ledger:
            tps = r.get("completion_tokens_per_s")
            cells += [f"{r['busy_s']:,.1f}" if "busy_s" in r else "", f"{tps:,.1f}" if tps else ""]
        t.add_row(*cells, money(r["cost"]))

    for m in u["models"]:
        row(m, "(all)")
        for g, rows in u["by"].items():
            for r in rows:
                if r["model"] == m["model"]:
                    row(r, f"{g}={r[g]}")
    for s in u["sessions"] if len(u["sessions"]) > 1 else []:
        for m in s["models"]:
            row(m, f"session {s['session']}")
    tot = u["total"]
    t.add_row("total", "", f"{tot['requests']:,}", *([f"{tot['cache_hits']:,}", f"{tot['errors']:,}"] if ledger else []),
              f"{tot['prompt_tokens']:,}", f"{tot['completion_tokens']:,}",
              *([f"{tot['reasoning_tokens']:,}"] if thinking else []), *(["", ""] if ledger else []), money(tot["cost"]))
    return t


def endpoints_table(rows: list[dict]) -> Table:
    """Per server of a `backend: openai` model (latest session): the fleet's split of the work."""
    t = Table(title="endpoints (latest session)")
    for col in ("model", "endpoint", "requests", "answered", "errors", "re-sent", "hedges", "completion tokens",
                "tok/s", "window", "state"):
        text_col = col in ("model", "endpoint", "state")
        t.add_column(col, justify="left" if text_col else "right", no_wrap=text_col)
    for e in rows:
        tps = e.get("completion_tokens_per_s")
        t.add_row(Text(str(e["model"])), Text(str(e["url"])), f"{e['requests']:,}", f"{e['answered']:,}",
                  f"{e['errors']:,}", f"{e['redispatched']:,}",
                  f"{e['hedges']:,} ({e['hedges_won']:,} won)" if e["hedges"] else "0", f"{e['completion_tokens']:,}",
                  f"{tps:,.1f}" if tps else "", f"{e['window']:g}" if e.get("window") is not None else "",
                  str(e.get("state") or ""))
    return t


def usage_notes(u: dict) -> list[str]:
    """The lines under the usage table: the projection of a run in progress, and what was counted."""
    from generator.export.usage import money

    lines: list[str] = []
    p = u["progress"]
    if p and p["projected"]:
        pr = p["projected"]
        cost = f", cost {money(pr['cost'])}" if pr["cost"] is not None else ""
        lines.append(f"in progress: {p['records_answered']:,} of {p['planned']:,} records answered; at this rate "
                     f"the whole plan takes {pr['requests']:,} calls, {pr['prompt_tokens']:,} prompt and "
                     f"{pr['completion_tokens']:,} completion tokens{cost}")
    from generator.core import storage
    from generator.core.run_layout import CACHE

    no_cache = ("its cache.sqlite could not be read" if storage.exists(storage.join(u["run"], CACHE))
                else "no published answers")
    note = {"ledger": "the usage ledger: every model call and cache hit, per session",
            "cache": "every paid request, retries included (request cache; no hits or time recorded)",
            "generations": f"final attempts only ({no_cache})"}[u["source"]]
    busy = (f"; {len(u['sessions'])} session(s); busy s is each model's time from its first request to its last "
            f"answer" if u["source"] == "ledger" else "")
    lines.append(f"counted from: {note}{busy}; cost = tokens x the model's `price` per million tokens "
                 f"(models without one show -)")
    return lines
