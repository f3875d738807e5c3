"""Usable rate per template on a real engine: how many answers come back `ok`.

    SYNTHGEN_CACHE=/tmp/sgcache .venv/bin/python bench/usable.py --group textbook -n 16
    .venv/bin/python bench/usable.py --templates math/word_problem,math/multi_step -n 16 --max-tokens 320
    .venv/bin/python bench/usable.py --group textbook --repetition-penalty 1.0   # without the specs' penalty
    .venv/bin/python bench/usable.py --group math --dump /tmp/math.jsonl    # and every answer, to read

Each template gets N records planned from the library spec of its kind (textbook/* from
specs/textbook.yaml, math/* from specs/math.yaml, sft/* from specs/instruct.yaml) with only that
template, so the prompts, topics, personas and sampling are the ones a run would use. All
templates' records go to one engine as one batch, through the run loop's own request building,
retries (`run.retries`) and status classification (`generator/engine/requests.py`), so a row here
gets exactly the status it would get in `synthgen run`. Prints per template: usable (`ok`),
truncated (hit `max_tokens`), invalid (`invalid_json`: did not parse or render), empty, error,
and completion tokens; the request count includes retries (a cut structured answer is retried when
its schema fits `max_tokens`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASE_SPECS = {"textbook": "textbook.yaml", "math": "math.yaml", "sft": "instruct.yaml"}
GROUPS = {
    "textbook": ["textbook/topic", "textbook/topic_style", "textbook/topic_style_persona",
                 "textbook/multi_topic_style_persona"],
    "math": ["math/word_problem", "math/multi_step", "math/common_mistake", "math/socratic_dialogue",
             "math/proof_or_explanation"],
    "sft": ["sft/single_turn", "sft/multi_turn"],
}
STATUSES = ("ok", "truncated", "invalid_json", "empty", "error")


def plan_rows(template: str, n: int, model: str, max_tokens: int | None,
              repetition_penalty: float | None = None) -> tuple[list[dict], object, int, int]:
    """N planned rows of `template`, with its resolved spec, retries and max_tokens."""
    from generator.config.spec import load_spec
    from generator.engine.planner import plan_spec

    kind = template.split("/")[0]
    base = ROOT / "specs" / BASE_SPECS[kind]
    over = {"templates": f"[{{template: {template}}}]", "models": f"[{{name: {model}}}]",
            # enough planned records for any N; the plan's first N are used
            "generations_per_topic": str(max(1, n))}
    if max_tokens is not None:
        over["sampling.max_tokens"] = str(max_tokens)
    if repetition_penalty is not None:
        over["sampling.repetition_penalty"] = str(repetition_penalty)
    spec = load_spec(base, over)
    resolved, records = plan_spec(spec, limit=n)
    rows = [r.to_row() for r in records]
    return rows, resolved, spec.run.retries, spec.sampling.max_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--group", action="append", choices=sorted(GROUPS), default=[],
                    help="a library group of templates (repeatable; default: textbook and math)")
    ap.add_argument("--templates", default="", help="comma-separated template names")
    ap.add_argument("-n", type=int, default=16, help="records per template (default 16)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override sampling.max_tokens (default: the base spec's)")
    ap.add_argument("--repetition-penalty", type=float, default=None,
                    help="override sampling.repetition_penalty (default: the base spec's)")
    ap.add_argument("--model", default="smollm2-135m", help="model name or path for vLLM (default: the embedded model)")
    ap.add_argument("--json", help="write the per-template counts here")
    ap.add_argument("--dump", help="write every answered row (prompt, completion, status) here as JSON lines")
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    names = [t for g in args.group for t in GROUPS[g]] + [t for t in args.templates.split(",") if t.strip()]
    if not names:  # the groups a plain `make bench` measures
        names = GROUPS["textbook"] + GROUPS["math"]

    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    import dataclasses

    from generator.engine.pipeline.execute import answer_rows

    rows, resolved, retries, max_tokens = [], None, 0, {}
    for name in names:
        r, res, retries, mt = plan_rows(name, args.n, args.model, args.max_tokens, args.repetition_penalty)
        rows += r
        # one run over every template: their templates and topic cells side by side
        resolved = res if resolved is None else dataclasses.replace(
            resolved, templates=resolved.templates + res.templates, cells=resolved.cells + res.cells)
        max_tokens[name] = mt
    t0 = time.time()
    backend = VLLMOfflineBackend(args.model, engine={"max_model_len": 2048})
    load_s = time.time() - t0
    done: list[dict] = []
    t1 = time.time()
    calls = answer_rows(resolved, rows, {args.model: backend}, done.append, retries=retries)
    gen_s = time.time() - t1
    backend.close()

    penalties = sorted({str(r.get("repetition_penalty")) for r in rows})
    print(f"model {args.model}; {args.n} records per template; retries {retries}; "
          f"repetition_penalty {'/'.join(penalties)}; "
          f"{calls} requests; engine load {load_s:.0f}s, generation {gen_s:.0f}s")
    print(f"{'template':38s} {'max_tok':>7s} {'n':>3s} " + " ".join(f"{s:>12s}" for s in STATUSES)
          + f" {'usable':>7s} {'mean_tok':>8s}")
    report = {}
    for name in names:
        mine = [d for d in done if d["template"] == name]
        counts = {s: sum(d["status"] == s for d in mine) for s in STATUSES}
        toks = [d["completion_tokens"] or 0 for d in mine]
        rate = counts["ok"] / max(len(mine), 1)
        report[name] = {"n": len(mine), "max_tokens": max_tokens[name], **counts, "usable_rate": rate,
                        "mean_completion_tokens": statistics.mean(toks) if toks else 0.0,
                        "attempts": sum(d["attempts"] for d in mine)}
        print(f"{name:38s} {max_tokens[name]:7d} {len(mine):3d} "
              + " ".join(f"{counts[s]:12d}" for s in STATUSES)
              + f" {rate:7.0%} {report[name]['mean_completion_tokens']:8.0f}")
    total_ok = sum(v["ok"] for v in report.values())
    total = sum(v["n"] for v in report.values())
    print(f"all: {total_ok}/{total} usable ({total_ok / max(total, 1):.0%})")
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            for d in done:
                f.write(json.dumps({k: d.get(k) for k in ("template", "status", "completion_tokens",
                                                          "attempts", "prompt", "completion", "text")},
                                   ensure_ascii=False) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "seconds": gen_s, "templates": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
