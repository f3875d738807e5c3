"""The `synthgen` command: a thin layer of click commands over the Python API."""
from __future__ import annotations

import json
import logging

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from generator.cli.errors import Group
from generator.cli import decontaminate as _decontaminate, export as _export, library as _library, mix as _mix, \
    probe as _probe, report as _report, scoring as _scoring, view as _view
from generator.cli.options import (LOG_LEVELS, configure_logging, log_level, parse_sets as _parse_sets,
                                   quiet_engine_logs as _quiet_engine_logs)
from generator.cli.output import echo, show_table
from generator.core.version import __version__

console = Console(stderr=True, emoji=False, highlight=False)
out = Console(emoji=False, highlight=False)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="synthgen")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, param, value: Group.set_debug(value),
              help="Show the full traceback of an error (errors are otherwise one line).")
@click.option("--log-level", type=click.Choice(list(LOG_LEVELS), case_sensitive=False), default=None,
              help="What synthgen logs on stderr: warning (the default), error, info (milestones, and vLLM's "
                   "own logs) or debug. A run's run.log holds its info lines whatever this is.")
@click.option("-v", "verbosity", count=True, help="-v: --log-level info; -vv: --log-level debug.")
def main(log_level: str | None, verbosity: int) -> None:
    """Generate diverse synthetic training data from a YAML spec, measure its diversity,
    and export real:synthetic training mixes.

    \b
    Start here:
      synthgen validate specs/math.yaml     check a spec without loading a model
      synthgen render specs/math.yaml -n 3  see the prompts it will send
      synthgen run specs/math.yaml          generate into runs/math/
    """
    configure_logging(log_level or ("debug" if verbosity >= 2 else "info" if verbosity else "warning"))


set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a spec value, e.g. --set seed=7 --set generations_per_topic=2.")
allow_option = click.option("--allow-path", "allow", multiple=True, metavar="DIR",
                            help="Also read templates, topics and personas from DIR (repeatable); by "
                                 "default only the spec's project and the built-in library are read.")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run folder, a path or an fsspec URL such as "
              "s3://bucket/prefix (default: the spec's `output`, else runs/<name>). Rerunning into the same folder "
              "resumes.")
@click.option("--limit", type=int, help="Generate only the first N planned records (spread over topics).")
@click.option("--target", type=int, help="Run until N records are accepted (end `ok`, and pass the spec's "
              "target.where): plans more records as needed (docs/targets.md).")
@click.option("--budget-records", type=int, help="Plan at most N records.")
@click.option("--budget-calls", type=int, help="Send at most N model calls (every session into the folder).")
@click.option("--budget-tokens", type=int, help="Spend at most N prompt + completion tokens (every session).")
@click.option("--budget-cost", type=float, help="Spend at most this much money, from the models' `price:`.")
@click.option("--budget-seconds", type=float, help="Stop sending requests after this many seconds.")
@set_option
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where shards run: this process, or Ray actors (one vLLM engine each).")
@click.option("--address", help="Ray cluster address for --executor ray (default: start a local Ray).")
@click.option("--actors", type=int, default=None,
              help="Ray actors (default: as many as the cluster holds, at most one per shard: its GPUs // "
                   "the GPUs one actor needs, else its CPUs, or one per node for vLLM on CPU; see "
                   "docs/scale-out.md).")
@click.option("--verbose", is_flag=True, help="Show vLLM's own logs and synthgen's info lines (as `synthgen -v "
              "run` does).")
@allow_option
def run(spec_path, out, limit, target, budget_records, budget_calls, budget_tokens, budget_cost, budget_seconds,
        sets, executor, address, actors, verbose, allow):
    """Generate the records SPEC plans into a run folder (resumes an existing one).

    With a target (--target N or the spec's `target:`), it plans and generates until N records are
    accepted; a budget (--budget-* or the spec's `budget:`) is checked before each request."""
    if limit is not None and limit < 1:
        raise click.UsageError(f"--limit {limit}: give a count of 1 or more")
    if target is not None and target < 1:
        raise click.UsageError(f"--target {target}: give a count of 1 or more")
    budget = {"records": budget_records, "calls": budget_calls, "tokens": budget_tokens, "cost": budget_cost,
              "seconds": budget_seconds}
    for key, value in budget.items():
        if value is not None and value <= 0:
            raise click.UsageError(f"--budget-{key} {value}: give a positive limit")
    if actors is not None and actors < 1:
        raise click.UsageError(f"--actors {actors}: give a count of 1 or more")
    if verbose and log_level() > logging.INFO:
        configure_logging("info")
    _quiet_engine_logs()
    from generator import run as run_spec
    from generator.config.spec import load_spec

    spec = load_spec(spec_path, _parse_sets(sets), allow)
    ex = None
    if executor == "ray":
        from generator.engine.executors.ray import RayExecutor

        ex = RayExecutor(address=address, actors=actors,
                         say=lambda line: console.print(line, markup=False, highlight=False))
    from generator.cli.progress import RunDisplay

    display = RunDisplay(console, {m.name: m.price.model_dump() if m.price else None for m in spec.models})
    try:
        result = run_spec(spec, out=out, limit=limit, executor=ex, progress=display, target=target, budget=budget)
    finally:
        display.close()
    _summary(result)


def _usage_rows(t, usage: dict) -> None:
    """Per model: calls, cache hits, busy throughput; the cost of this `synthgen run` and of every
    run into the folder (a session is one `synthgen run` invocation: a resume starts a new one)."""
    from generator.export.usage import money

    this = {r["model"]: r for r in (usage.get("this_session") or {}).get("models", [])}
    total, runs = usage.get("total") or {}, usage.get("sessions", 0)
    for r in usage.get("models", []):
        s = this.get(r["model"], {})
        rate = f"  {s['completion_tokens_per_s']:,.1f} completion tok/s busy" if s.get("completion_tokens_per_s") else ""
        t.add_row(Text(f"  {r['model']}"), f"this run {s.get('requests', 0):,} calls, {s.get('cache_hits', 0):,} "
                  f"cache hits{rate}; all {runs} run(s) into the folder {r['requests']:,} calls")
    if total.get("cost") is not None:
        now = (usage.get("this_session") or {}).get("total", {}).get("cost")
        t.add_row("cost", f"this run {money(now)}; all {runs} run(s) into the folder {money(total['cost'])}")


def _target_rows(t, m: dict) -> None:
    """The target (accepted of wanted, and why it ended) and the budget (what ended it, what is left)."""
    tg, b = m.get("target"), m.get("budget")
    if tg:
        how = "reached" if tg["reached"] else f"not reached ({tg.get('stopped_by') or 'stopped'})"
        beyond = f"; {tg['beyond_target']} more accepted beyond it (kept, status beyond_target)" \
            if tg.get("beyond_target") else ""
        t.add_row("target", f"accepted {tg['accepted_so_far']} / {tg['accepted']}, {how}, {tg['planned']} "
                  f"records planned in {tg['passes']} pass(es){beyond}")
    if b and b.get("limits"):
        left = ", ".join(f"{k} {v:,.4g}" for k, v in b["left"].items())
        ended = f"stopped by {b['stopped_by']}" if b.get("stopped_by") else "within budget"
        t.add_row("budget", f"{ended}; left: {left}")
    line = (tg or {}).get("hopeless")
    if line:
        t.add_row("warning", escape(line))


def _endpoint_rows(t, manifest: dict) -> None:
    """Per server of a `backend: openai` fleet: its share of the requests, errors and rate."""
    from generator.export.usage import endpoints

    for e in endpoints(manifest):
        tps = f", {e['completion_tokens_per_s']:,.1f} completion tok/s" if e.get("completion_tokens_per_s") else ""
        down = "" if e.get("state") != "down" else ", down"
        hedges = f", {e['hedges']:,} hedges ({e['hedges_won']:,} answered first)" if e["hedges"] else ""
        t.add_row(Text(f"  {e['url']}"), f"{e['requests']:,} requests, {e['errors']:,} errors{hedges}{tps}{down}")


def _summary(result) -> None:
    m = result.manifest
    t = Table(title=f"run {m['name']} -> {result.run_dir}", show_header=False)
    t.add_column("")
    t.add_column("")
    t.add_row("records", f"{result.generated} / {result.planned}")
    for status, n in sorted(result.statuses.items()):
        t.add_row(f"  {status}", str(n))
    _target_rows(t, m)
    tok = m["counts"]["tokens"]
    t.add_row("tokens", f"prompt {tok['prompt']:,}  completion {tok['completion']:,}")
    last = m["timings"][-1]
    t.add_row("time", f"plan {last['plan_s']:.1f}s  generate {last['generate_s']:.1f}s")
    if last.get("completion_tokens_per_s"):
        t.add_row("throughput", f"{last['completion_tokens_per_s']:,.0f} completion tok/s")
    t.add_row("model calls", str(result.model_calls))
    _usage_rows(t, m.get("usage") or {})
    _endpoint_rows(t, m)
    for name, r in (m.get("pipeline") or {}).get("stages", {}).items():
        rate = f"{r['pass_rate']:.0%}" if r["pass_rate"] is not None else "-"
        t.add_row(f"stage {escape(name)}", f"ran {r['ran']}  passed {r['passed']}  rejected {r['rejected']}  ({rate})")
    if result.scores:
        for entry in result.scores.get("datasets", {}).values():
            for name, res in entry.get("metrics", {}).items():
                value = res.get("value")
                groups = ", ".join(f"{g} {v:.3g}" for g, v in sorted((res.get("per_group") or {}).items()))
                shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                t.add_row(f"score {name}", shown + (f"  ({groups})" if groups else ""))
    show_table(t)  # flagged records were a warning of the run itself (its run.log has it too)


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
@allow_option
def validate(spec_path, sets, allow):
    """Check SPEC and every file it names, and render each template once, without loading a model.

    SPEC may also be a mix file (real:, synthetic:, ratio:): its sources are checked without reading data."""
    from generator import validate as check
    from generator.config.mix import is_mix_file
    from generator.config.spec import load_spec, spec_file
    from generator.core.yaml_loader import load_yaml
    from generator.engine.planner import budget_notes, default_counts

    overrides = _parse_sets(sets)
    doc = load_yaml(spec_file(spec_path))
    if is_mix_file(doc.data):
        if overrides:
            raise click.UsageError("--set applies to specs; edit the mix file instead")
        _validate_mix(spec_path, doc, doc.data)
        return
    spec = load_spec(spec_path, overrides, allow, located=doc)
    resolved = check(spec)
    if spec.mix is not None:  # before the ok line: a broken mix section fails the whole check
        _validate_mix(spec_path, doc, spec.mix, ("mix",), own_run=spec.output_dir())
    n = spec.rounds.budget if spec.rounds is not None else sum(default_counts(resolved).values())
    stages = f"stages {' -> '.join(s.name for s in spec.stages)}; " if spec.stages else ""
    echo(f"ok {spec_path}: {len(resolved.cells)} topic cells, {len(resolved.templates)} "
         f"templates, {len(resolved.personas or [])} personas, {len(resolved.models)} model(s); "
         f"{stages}" + (f"target {spec.target.accepted} accepted records" if spec.target is not None
                        else f"{n} records planned"))
    for note in budget_notes(resolved):
        click.echo(f"note: {note}", err=True)


def _validate_mix(shown: str, doc, data: dict, prefix: tuple = (), own_run=None) -> None:
    """A mix config's shape and sources (cheap checks, nothing read). In a spec, the spec's own run
    folder need not exist yet: `synthgen run` writes it."""
    from pathlib import Path

    from generator.config.mix import mix_config_from_dict
    from generator.mix.preflight import check_sources

    cfg = mix_config_from_dict(data, doc.file.parent, doc, prefix)
    if own_run is not None:
        from generator.core import storage

        def where(run):  # one spelling of a location, to compare them
            return str(run).rstrip("/") if storage.is_url(run) else Path(run).absolute()

        own = {where(own_run)} if storage.is_url(own_run) else {where(own_run), where(doc.file.parent / own_run)}
        waiting = [s for s in cfg.synthetic if where(s.run) in own and not storage.exists(s.run)]
        for s in waiting:
            click.echo(f"note: mix source {s.run} does not exist yet; `synthgen run` writes it", err=True)
        cfg = cfg.model_copy(update={"synthetic": [s for s in cfg.synthetic if s not in waiting]})
    check_sources(cfg, doc, prefix)
    if not prefix:
        ratios = ", ".join(cfg.ratio_list())
        echo(f"ok {shown}: mix of {len(cfg.real)} real and {len(cfg.synthetic)} synthetic source(s), "
             f"ratio{'s' if len(cfg.ratio_list()) > 1 else ''} {ratios}")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many prompts to show.")
@click.option("--json", "as_json", is_flag=True, help="Print records as JSON lines instead.")
@set_option
@allow_option
def render(spec_path, count, as_json, sets, allow):
    """Show the first N rendered prompts of SPEC's plan (no model is loaded)."""
    from generator.engine.planner import plan_spec
    from generator.config.spec import load_spec

    if count < 0:
        raise click.UsageError(f"-n {count}: give a count of 0 or more")
    spec = load_spec(spec_path, _parse_sets(sets), allow)
    _, records = plan_spec(spec, limit=count)  # builds only the records it prints
    for r in records[:count]:
        if as_json:
            echo(json.dumps(r.to_row(), ensure_ascii=False))
            continue
        echo(f"--- {r.id}  {r.template}  |  {r.topic_id}  |  g={r.generation}  model={r.model}  seed={r.seed}")
        if r.persona_ids:
            echo(f"personas: {', '.join(r.persona_ids)}  vars: {r.template_vars}")
        for m in r.messages:
            echo(f"{m['role']}:")
            echo(m["content"])


@main.command()
def schema():
    """Print the spec's JSON Schema (for editor completion and validation)."""
    from generator.config.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


def _register() -> None:
    """The other modules' commands, attached by their click name. They import only what every
    install has (a command's optional packages are imported when it runs), so a broken import
    here is a bug and fails loudly."""
    for mod, names in ((_scoring, ("score", "compare", "dedup")), (_mix, ("mix",)),
                       (_decontaminate, ("decontaminate",)),
                       (_library, ("library", "init", "personas", "topics", "preview")), (_report, ("report",)),
                       (_export, ("export", "usage")), (_view, ("view",)), (_probe, ("probe",))):
        found = {c.name: c for c in vars(mod).values() if isinstance(c, click.Command)}
        for name in names:
            main.add_command(found[name], name)


_register()

if __name__ == "__main__":
    main()
