"""Library commands: `library`, `init`, `personas expand`, `topics expand`, and `preview`."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from generator.core.errors import SynthgenError
from generator.library.catalog import (KINDS, builtin_root, list_library, load_personas, load_template, load_topic_tree,
                      resolve, template_name)

from generator.cli.output import echo, show_table

out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)

model_options = [
    click.option("--model", default="smollm2-135m", show_default=True, help="Model alias, folder or server model name."),
    click.option("--backend", type=click.Choice(["vllm", "openai"]), default="vllm", show_default=True),
    click.option("--base-url", help="OpenAI-compatible server URL for --backend openai."),
    click.option("--api-key-env", help="Environment variable holding the server's API key."),
]


def with_model_options(f):
    for opt in reversed(model_options):
        f = opt(f)
    return f


def run_dir_option(default: str):
    return click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=default,
                        show_default=True,
                        help="Folder of this command's model calls: the answers are cached there (the same "
                             "command again pays for none of them) and `synthgen usage DIR` counts them.")


def _calls(path) -> str:
    return f"{path.model_calls} model calls, {path.cache_hits} answers from the cache"


def _backend(model, backend, base_url, api_key_env):
    from generator.engine.backends import make_backend
    from generator.cli.options import quiet_engine_logs
    from generator.config.models import ModelConfig

    quiet_engine_logs(False)
    try:
        cfg = ModelConfig(name=model, backend=backend, base_url=base_url, api_key_env=api_key_env)
    except ValueError as exc:  # the message only, never the value (it may be a pasted key)
        msg = exc.errors()[0].get("msg", "invalid value") if hasattr(exc, "errors") else "invalid value"
        raise click.UsageError(msg.removeprefix("Value error, ")) from None
    return make_backend(cfg)


@click.command("library")
@click.option("--dir", "base", type=click.Path(file_okay=False, path_type=Path),
              help="Also list a project's own library folders (templates/, personas/, topics/).")
def library(base):
    """List templates, persona sets, topic trees and specs, with counts."""
    t = Table(title="templates")
    t.add_column("name", no_wrap=True)
    for col in ("purpose", "output", "renderer"):
        t.add_column(col, no_wrap=True)
    t.add_column("description", overflow="fold", ratio=1)
    for p in list_library("templates", base):
        tpl = load_template(p, template_name(p))
        t.add_row(tpl.name, tpl.purpose, "json" if tpl.output_schema else "", tpl.renderer or "",
                  tpl.description[:70])
    show_table(t)
    t = Table(title="persona sets")
    for col in ("name", "personas", "occupations", "regions", "age bands"):
        t.add_column(col, no_wrap=True)
    for p in list_library("personas", base):
        ps = load_personas(p)
        t.add_row(p.stem, str(len(ps)), str(len({x.get("occupation") for x in ps})),
                  str(len({x.get("region") for x in ps})), str(len({x.get("age_band") for x in ps})))
    show_table(t)
    t = Table(title="topic trees")
    for col in ("name", "leaves", "nodes", "top-level", "levels"):
        t.add_column(col)
    for p in list_library("topics", base):
        tree = load_topic_tree(p)
        leaves = tree.leaves()
        levels = Counter(n.level for n in leaves if n.level)
        t.add_row(p.stem, str(len(leaves)), str(sum(1 for _ in tree.nodes())), str(len(tree.roots)),
                  str(len(levels)))
    show_table(t)
    specs = list_library("specs", base)
    echo(f"specs: {', '.join(p.stem for p in specs)}")


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write into a folder that already has library files.")
def init(directory, force):
    """Copy the built-in templates, personas, topics and specs into a new project DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    clashes = [k for k in KINDS if (directory / k).exists()]
    if clashes and not force:
        raise SynthgenError(f"{directory} already has {', '.join(clashes)}/; pass --force to merge into it")
    for kind in KINDS:
        src = builtin_root(kind)
        shutil.copytree(src, directory / kind, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc"))
    echo(f"ok {directory}: copied {', '.join(f'{k}/' for k in KINDS)}. "
              f"Try: synthgen validate {directory}/specs/math.yaml")


@click.group("personas")
def personas():
    """Persona sets: expand one with a model."""


@personas.command("expand")
@click.argument("seed_file", metavar="SEED", default="core")
@click.option("-n", "count", type=int, default=20, show_default=True, help="New personas to write.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL file to append the new personas to.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Word-set Jaccard above which a new persona counts as a near duplicate.")
@run_dir_option("runs/personas-expand")
@with_model_options
def personas_expand(seed_file, count, out_path, seed, threshold, run_dir, model, backend, base_url, api_key_env):
    """Write N new personas related to personas of SEED (a set name or .jsonl), without near duplicates."""
    from generator.library.growth import expand_personas, write_personas
    from generator.runs import request_session

    try:
        seeds = load_personas(resolve("personas", seed_file, Path.cwd()))
    except FileNotFoundError as exc:
        raise SynthgenError(str(exc)) from None
    be = _backend(model, backend, base_url, api_key_env)
    details = {"command": "personas expand", "seeds": seed_file, "count": count, "seed": seed, "threshold": threshold}
    try:
        with request_session(run_dir, be, "personas expand", "personas_expand", details=details) as path:
            new, stats = expand_personas(seeds, path, count, seed=seed, threshold=threshold)
    finally:
        be.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_personas(out_path, new)
    echo(f"wrote {len(new)} personas to {out_path} ({_calls(path)}, "
              f"{stats.invalid} invalid, {stats.near_duplicates} near duplicates dropped; usage: {run_dir})")
    for note in stats.notes:
        echo(f"note: {note}", error=True)


@click.group("topics")
def topics():
    """Topic trees: expand a node with a model."""


@topics.command("expand")
@click.argument("tree", metavar="TREE")
@click.argument("node", metavar="NODE_PATH")
@click.option("-n", "count", type=int, default=6, show_default=True, help="New subtopics to add.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the updated tree here (default: print the new subtopics).")
@click.option("--seed", type=int, default=0, show_default=True)
@run_dir_option("runs/topics-expand")
@with_model_options
def topics_expand(tree, node, count, out_path, seed, run_dir, model, backend, base_url, api_key_env):
    """Ask a model for new subtopics (with keywords) of NODE_PATH in TREE, dropping duplicates.

    NODE_PATH is the node's names joined by ' / ', e.g. "Arithmetic / Fractions"."""
    from generator.library.growth import dump_tree, expand_topic_node
    from generator.runs import request_session

    try:
        tree_file = resolve("topics", tree, Path.cwd())
        load_topic_tree(tree_file)  # strict check of the input before paying for calls
    except FileNotFoundError as exc:
        raise SynthgenError(str(exc)) from None
    be = _backend(model, backend, base_url, api_key_env)
    details = {"command": "topics expand", "tree": tree, "node": node, "count": count, "seed": seed}
    try:
        with request_session(run_dir, be, "topics expand", "topics_expand", details=details) as path:
            raw, new, stats = expand_topic_node(tree_file, node, path, count=count, seed=seed)
    except KeyError as exc:
        raise SynthgenError(str(exc.args[0])) from None
    finally:
        be.close()
    if out_path:
        out_path.write_text(dump_tree(raw))
        load_topic_tree(out_path)  # what we wrote must load
        echo(f"wrote {out_path} with {len(new)} new subtopics under '{node}'")
    else:
        echo(dump_tree({"nodes": new}))
    echo(error=True, text=f"{_calls(path)}, {stats.invalid} invalid, {stats.near_duplicates} duplicates dropped; "
                          f"usage: {run_dir}")


@click.command("preview")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-n", "count", type=int, default=4, show_default=True, help="Generations per template.")
@click.option("--metrics", default="distinct_n,compression_ratio,near_dup_rate,mean_cosine_distance",
              show_default=True, help="Comma-separated metric names.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec value.")
@click.option("--allow-path", "allow", multiple=True, metavar="DIR",
              help="Also read templates, topics and personas from DIR (repeatable).")
def preview(spec_path, count, metrics, sets, allow):
    """Generate N records per template and show them with per-template diversity scores.

    Nothing is written: this is for iterating on templates (edit, preview, compare)."""
    from generator.engine.backends import make_backend
    from generator.cli.options import parse_sets, quiet_engine_logs
    from generator.engine.planner import expand, resolve_spec, validate
    from generator.engine.executors.local import build_backends
    from generator.engine.pipeline.execute import answer_rows
    from generator.config.spec import load_spec

    quiet_engine_logs(False)
    from generator.cli.scoring import check_metrics

    check_metrics(None, None, metrics)
    spec = load_spec(spec_path, parse_sets(sets), allow)
    resolved = resolve_spec(spec)
    validate(resolved)
    per_cell = max(1, -(-count * len(resolved.templates) // max(1, len(resolved.cells))) * 2)
    records = expand(resolved, counts={c.id: per_cell for c in resolved.cells})
    chosen = []
    for tpl, _ in resolved.templates:
        mine = sorted((r for r in records if r.template == tpl.name), key=lambda r: (r.generation, r.topic_id))
        chosen.extend(mine[:count])
    rows = [r.to_row() for r in chosen]
    tpls = resolved.template_by_name
    finished: list[dict] = []
    backends: dict = {}
    try:
        build_backends(make_backend, resolved.spec.models, {r["model"] for r in rows}, {}, backends)
        answer_rows(resolved, rows, backends, finished.append)
    finally:
        for b in backends.values():
            b.close()
    for row in sorted(finished, key=lambda r: (r["template"], r["generation"], r["topic_id"])):
        echo(f"--- {row['template']} | {row['topic_id']} | {row['status']} | {row['completion_tokens']} tokens")
        echo(row["text"] or row["completion"] or "")
    from scoring.metrics import score_texts

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    t = Table(title="diversity per template (ok rows)")
    t.add_column("template")
    t.add_column("ok")
    for n in names:
        t.add_column(n)
    for tpl, _ in resolved.templates:
        texts = [r["text"] for r in finished if r["template"] == tpl.name and r["status"] == "ok"]
        if len(texts) < 2:
            t.add_row(tpl.name, str(len(texts)), *["-"] * len(names))
            continue
        res = score_texts(texts, names, seed=spec.seed)
        t.add_row(tpl.name, str(len(texts)), *[f"{res[n].value:.3f}" for n in names])
    show_table(t)
