"""`synthgen probe MIX...`: train a small model on each mix with identical settings, evaluate, compare."""
from __future__ import annotations

from pathlib import Path

import click

from generator.core.errors import SynthgenError


def _tokens(value: str | None) -> int | None:
    if value is None:
        return None
    from generator.mix import parse_token_count

    try:
        return parse_token_count(value)
    except (ValueError, SynthgenError) as exc:
        raise click.BadParameter(str(exc), param_hint="--token-budget") from None


@click.command("probe")
@click.argument("mixes", metavar="MIX...", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Base model: the embedded alias or a local Hugging Face folder.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Probe folder (default: probes/<first MIX folder name>). Rerunning into it resumes.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per arm.")
@click.option("--seed", "first_seed", type=int, default=0, show_default=True, help="First seed; seeds count up from it.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps per arm (default 50, or from --token-budget).")
@click.option("--token-budget", default=None, help="Training tokens per arm (e.g. 2M); steps = budget / tokens per step.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=8), default=256, show_default=True,
              help="Tokens per training sequence.")
@click.option("--lr", "learning_rate", type=float, default=1e-4, show_default=True, help="Peak learning rate.")
@click.option("--lr-scheduler", default="cosine", show_default=True, help="transformers scheduler name.")
@click.option("--warmup", "warmup_fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Warm-up as a fraction of the steps.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=1), default=None,
              help="Checkpoint every N steps (default: steps / 5).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="auto: bfloat16 on a GPU that supports it, float32 on CPU.")
@click.option("--eval-real", type=click.Path(exists=True, path_type=Path), default=None,
              help="Held-out real data for perplexity (.jsonl/.parquet/.jsonl.zst or a folder).")
@click.option("--eval-text-field", default=None, help="Text column of --eval-real (default: text).")
@click.option("--eval-text-template", default=None,
              help="Text of --eval-real rows, e.g. '{question}\\n{answer}' (the default when those fields exist).")
@click.option("--eval-user-template", default=None, help="Messages layout: the user turn of --eval-real rows.")
@click.option("--eval-assistant-template", default=None, help="Messages layout: the scored answer of --eval-real rows.")
@click.option("--eval-docs", type=click.IntRange(min=1), default=64, show_default=True,
              help="First N rows of --eval-real.")
@click.option("--eval-synthetic-docs", type=click.IntRange(min=0), default=64, show_default=True,
              help="Held-out synthetic rows for perplexity (0: none).")
@click.option("--eval-seq-len", type=click.IntRange(min=8), default=None, help="Tokens per eval item (default: --seq-len).")
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--gsm8k", type=click.Path(exists=True, path_type=Path), default=None,
              help="GSM8K-style file (question, answer with '#### N') for answer accuracy.")
@click.option("--gsm8k-n", type=click.IntRange(min=1), default=16, show_default=True, help="First N problems.")
@click.option("--gsm8k-max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--gsm8k-prompt", default="{question}\\n", show_default=True,
              help="Text layout: the prompt the model continues ({question}).")
@click.option("--lm-eval-task", "lm_eval_tasks", multiple=True,
              help="lm-evaluation-harness task through its vLLM backend (repeatable; needs lm_eval installed).")
@click.option("--lm-eval-limit", type=click.IntRange(min=1), default=None, help="Examples per lm-eval task.")
@click.option("--diversity-metric", "diversity_metrics", multiple=True,
              help="Diversity metric of the synthetic part (repeatable; the first is the plot's x axis; "
                   "default: distinct_n, compression_ratio).")
@click.option("--keep-models/--no-keep-models", default=True, show_default=True,
              help="Keep each trained model in arms/<arm>/seed-<s>/final.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def probe(mixes, model, out, seeds, first_seed, max_steps, token_budget, batch_size, grad_accum, seq_len,
          learning_rate, lr_scheduler, warmup_fraction, weight_decay, save_steps, device, precision, eval_real,
          eval_text_field, eval_text_template, eval_user_template, eval_assistant_template, eval_docs,
          eval_synthetic_docs, eval_seq_len, eval_batch_size, gsm8k, gsm8k_n, gsm8k_max_new_tokens, gsm8k_prompt,
          lm_eval_tasks, lm_eval_limit, diversity_metrics, keep_models, quiet):
    """Train the same base model on each MIX with identical settings, evaluate each, and compare.

    MIX is the --out folder of `synthgen mix` (every ratio in it becomes an arm: a sweep in one
    command) or one ratio-* folder of it. Text mixes are continued pre-training, messages mixes SFT.
    Writes OUT/probe.json, OUT/probe.png and prints a table of mean ± sd over seeds.

    \b
    synthgen probe mixes/math --eval-real ../shared/data/gsm8k/test.jsonl \\
                   --gsm8k ../shared/data/gsm8k/test.jsonl --seeds 3 --max-steps 200
    """
    from pydantic import ValidationError
    from rich.console import Console

    from generator.probe import ProbeSettings, seed_list
    from generator.probe.report import differences_table, table

    def unescape(t):  # a typed "\\n" in a template means a newline, as in `synthgen mix`
        return t.replace("\\n", "\n") if t else t

    try:
        settings = ProbeSettings(
            model=model, seeds=seed_list(seeds, first_seed), max_steps=max_steps, token_budget=_tokens(token_budget),
            batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len, learning_rate=learning_rate,
            lr_scheduler=lr_scheduler, warmup_fraction=warmup_fraction, weight_decay=weight_decay,
            save_steps=save_steps, device=device, precision=precision,
            eval_real=eval_real.absolute() if eval_real else None, eval_text_field=eval_text_field,
            eval_text_template=unescape(eval_text_template), eval_user_template=unescape(eval_user_template),
            eval_assistant_template=unescape(eval_assistant_template), eval_docs=eval_docs,
            eval_synthetic_docs=eval_synthetic_docs, eval_seq_len=eval_seq_len, eval_batch_size=eval_batch_size,
            gsm8k=gsm8k.absolute() if gsm8k else None, gsm8k_n=gsm8k_n, gsm8k_max_new_tokens=gsm8k_max_new_tokens,
            gsm8k_prompt=unescape(gsm8k_prompt), lm_eval_tasks=list(lm_eval_tasks), lm_eval_limit=lm_eval_limit,
            diversity_metrics=list(diversity_metrics) or ["distinct_n", "compression_ratio"],
            keep_models=keep_models)
    except ValidationError as exc:
        e = exc.errors()[0]  # settings come from options: name the option as typed
        option = "--" + str(e["loc"][0]).replace("_", "-") if e.get("loc") else "an option"
        raise click.UsageError(f"{option}: {e['msg'].removeprefix('Value error, ')}") from None
    _check_choices(settings)
    out = out or Path("probes") / mixes[0].resolve().name
    err = Console(stderr=True, highlight=False)
    result = _run(mixes, settings, out, err, quiet)
    console = Console(highlight=False)
    console.print(table(result))
    if result.get("differences"):
        console.print(differences_table(result))
    console.print(f"wrote {out / 'probe.json'}" + (f" and {out / result['plot']}" if result.get("plot") else ""),
                  markup=False)


def _run(mixes, settings, out, err, quiet):
    from generator.probe.run import run_probe

    return run_probe(list(mixes), settings, out, log=lambda m: err.print(m, markup=False), progress=not quiet)


def _check_choices(settings) -> None:
    """Fail before any model loads: unknown scheduler or diversity metric."""
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    if settings.lr_scheduler not in names:
        raise click.BadParameter(f"'{settings.lr_scheduler}' is not a scheduler; use one of {', '.join(names)}",
                                 param_hint="--lr-scheduler")
    from scoring import available

    known = available()
    for m in settings.diversity_metrics:
        if m not in known:
            raise click.BadParameter(f"'{m}' is not a metric; use one of {', '.join(sorted(known))}",
                                     param_hint="--diversity-metric")
