"""Evaluating a model with settings identical for every arm: perplexity, GSM8K accuracy, lm-eval tasks.

- Perplexity: exp(mean NLL per target token) over a fixed list of items, each cut to eval_seq_len
  tokens; text items are scored on every token (plus EOS), chat items on the assistant answer.
- GSM8K accuracy: greedy generation with transformers (no sampling, so the number is the same on
  every run), the answer is the number after the first '####' in the generation, else the last
  number in it; compared with the number after '####' in the gold answer.
- lm-evaluation-harness tasks through its vLLM backend, where `lm_eval` is installed.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

from generator.core.errors import SynthgenError
from generator.probe.encode import encode_item, load_tokenizer, render_chat

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _norm(s: str) -> str | None:
    s = s.replace(",", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return None
    return str(int(v)) if v == int(v) else repr(v)


def gold_number(answer: str) -> str | None:
    m = re.search(r"####\s*(" + _NUM.pattern + ")", answer)
    return _norm(m.group(1)) if m else None


def extract_number(text: str) -> str | None:
    """The number after the first '####', else the last number before a blank line."""
    m = re.search(r"####\s*(" + _NUM.pattern + ")", text)
    if m:
        return _norm(m.group(1))
    nums = _NUM.findall(text.split("\n\n")[0])
    return _norm(nums[-1]) if nums else None


def load_model(path: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(path)  # first: it also silences the weights-loading bar
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    model.eval()
    return model, tok


def perplexity(model, tok, items: list, seq_len: int, batch_size: int) -> dict:
    import torch

    enc = [encode_item(tok, p, t, seq_len) for p, t in items]
    enc = [(i, lab) for i, lab in enc if sum(x != -100 for x in lab[1:]) > 0]
    if not enc:
        return {"ppl": None, "nll": None, "tokens": 0, "docs": 0}
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(enc), batch_size):
            chunk = enc[k:k + batch_size]
            n = max(len(i) for i, _ in chunk)
            ids = torch.tensor([i + [tok.pad_token_id] * (n - len(i)) for i, _ in chunk], device=device)
            lab = torch.tensor([la + [-100] * (n - len(la)) for _, la in chunk], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _ in chunk], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = lab[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "docs": len(enc)}


def gsm8k_accuracy(model, tok, problems: list[dict], layout: str, prompt: str, max_new_tokens: int,
                   batch_size: int) -> dict:
    import torch

    device = next(model.parameters()).device
    texts = [render_chat(tok, [{"role": "user", "content": p["question"]}], True) if layout == "messages"
             else prompt.format(question=p["question"]) for p in problems]
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the last real token of every row
    preds: list[str | None] = []
    try:
        with torch.no_grad():
            for k in range(0, len(texts), batch_size):
                enc = tok(texts[k:k + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                for row in out[:, enc["input_ids"].shape[1]:]:
                    preds.append(extract_number(tok.decode(row, skip_special_tokens=True)))
    finally:
        tok.padding_side = side
    correct = [p is not None and p == q["gold"] for p, q in zip(preds, problems)]
    return {"accuracy": sum(correct) / len(problems) if problems else None, "correct": sum(correct),
            "n": len(problems), "answered": sum(p is not None for p in preds), "predictions": preds}


def lm_eval_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def lm_eval_tasks(model_dir: Path, tasks: list[str], limit: int | None, seed: int) -> dict:
    """lm-evaluation-harness through its vLLM backend; numeric results per task."""
    if not lm_eval_available():
        raise SynthgenError("--lm-eval-task needs lm-evaluation-harness with its vLLM backend; install it with "
                            "`pip install \"lm_eval[vllm]\"`, or drop --lm-eval-task")
    import lm_eval

    res = lm_eval.simple_evaluate(model="vllm", model_args=f"pretrained={model_dir},dtype=auto,seed={seed}",
                                  tasks=list(tasks), limit=limit, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in (res or {}).get("results", {}).items()}


def evaluate_model(path: Path, settings, layout: str, real_items: list, syn_items: list, problems: list[dict],
                   seed: int) -> dict:
    """Every metric for one model folder, in a fixed order with fixed settings."""
    import torch

    from generator.probe.train import pick_device, pick_dtype

    torch.manual_seed(seed)
    device = pick_device(settings.device)
    model, tok = load_model(path, device, pick_dtype(settings.precision, device))
    t0 = time.perf_counter()
    out: dict = {}
    if real_items:
        out["real_ppl"] = perplexity(model, tok, real_items, settings.eval_len(), settings.eval_batch_size)
    if syn_items:
        out["synthetic_ppl"] = perplexity(model, tok, syn_items, settings.eval_len(), settings.eval_batch_size)
    if problems:
        out["gsm8k"] = gsm8k_accuracy(model, tok, problems, layout, settings.gsm8k_prompt,
                                      settings.gsm8k_max_new_tokens, settings.eval_batch_size)
    del model
    if settings.lm_eval_tasks:
        out["lm_eval"] = lm_eval_tasks(path, settings.lm_eval_tasks, settings.lm_eval_limit, seed)
    out["eval_s"] = round(time.perf_counter() - t0, 3)
    return out
