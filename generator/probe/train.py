"""Training one arm with one seed through transformers' `Trainer`: resumable, with a progress bar.

Text mixes are continued pre-training (documents packed into seq_len blocks); messages mixes are
SFT (one example per conversation, loss on the assistant turns). The folder of an (arm, seed):

    checkpoints/checkpoint-N/   Trainer checkpoints (model, optimizer, scheduler, RNG, trainer_state.json)
    final/                      the trained model + tokenizer, and train.json (written last)

A killed run resumes from the last complete checkpoint (one whose trainer_state.json reads,
since the Trainer writes it after everything else). Checkpoints are removed once final/ is saved.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from generator.core.errors import SynthgenError
from generator.core.model_aliases import ensure_converted, is_alias
from generator.probe.config import ProbeSettings
from generator.probe.encode import collate, encode_chat, load_tokenizer, pack_text

TRAIN_NAME = "train.json"


def resolve_base(name: str) -> Path:
    """The base model's local folder: the embedded alias converted once, or a Hugging Face folder."""
    if is_alias(name):
        return ensure_converted(name)
    p = Path(name).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p
    raise SynthgenError(f"model '{name}': not an embedded alias (smollm2-135m) or a local Hugging Face folder "
                        f"with config.json; pass --model PATH")


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise SynthgenError("--device cuda: no CUDA device is visible; use --device cpu (or auto)")
    return setting


def pick_dtype(setting: str, device: str):
    import torch

    if setting == "auto":  # CPU training in bf16 loses too much precision at these learning rates
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def last_checkpoint(ckpt_dir: Path, remove_incomplete: bool = False) -> tuple[Path | None, int]:
    """The newest complete checkpoint and its step; with remove_incomplete, newer incomplete ones
    (a run killed mid-save) are deleted. Never remove while a trainer may be writing there."""
    if not ckpt_dir.is_dir():
        return None, 0
    found = []
    for d in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    for step, d in sorted(found, reverse=True):
        try:
            state = json.loads((d / "trainer_state.json").read_text())
            if int(state.get("global_step", -1)) == step:
                return d, step
        except (OSError, ValueError):
            pass
        if remove_incomplete:
            shutil.rmtree(d, ignore_errors=True)
    return None, 0


def build_dataset(rows: list[dict], layout: str, tok, seq_len: int):
    from datasets import Dataset

    if layout == "text":
        blocks = pack_text(tok, [str(r["text"]) for r in rows if r.get("text")], seq_len)
        return Dataset.from_dict({"input_ids": blocks, "labels": blocks}), sum(len(b) for b in blocks)
    ids, labels = [], []
    for r in rows:
        msgs = r.get("messages")
        if not msgs:
            continue
        i, lab = encode_chat(tok, [{"role": m["role"], "content": m["content"]} for m in msgs], seq_len)
        if any(x != -100 for x in lab):
            ids.append(i)
            labels.append(lab)
    if not ids:
        raise SynthgenError("no conversation in the mix has an assistant turn within --seq-len; raise --seq-len")
    return Dataset.from_dict({"input_ids": ids, "labels": labels}), sum(len(i) for i in ids)


def _progress_callback(label: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        """A rich bar on stderr instead of tqdm plus a printed dict per logging step."""

        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(label, total=state.max_steps, completed=state.global_step, loss="-")

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.bar.update(self.task, loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.stop()

    return RichProgress()


def _first_step_callback_class():
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        """Records the first step this process ran (after a resume, the checkpoint's step + 1), and
        skips the Trainer's checkpoint at the last step: final/ is saved right after, and a full
        checkpoint (weights plus optimizer state) of a 135M model is 1.6 GB to write and delete."""

        step = None

        def on_step_end(self, args, state, control, **kw):
            if self.step is None:
                self.step = state.global_step
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return FirstStep


def _FirstStep():
    return _first_step_callback_class()()


def train_arm(rows: list[dict], layout: str, settings: ProbeSettings, seed: int, base: Path, arm_dir: Path,
              label: str = "train", progress: bool = True) -> dict:
    """Train (or resume, or reuse) one arm with one seed. Returns what train.json holds."""
    final = arm_dir / "final"
    if (final / TRAIN_NAME).is_file():
        return json.loads((final / TRAIN_NAME).read_text())
    import torch
    from transformers import (AutoModelForCausalLM, PrinterCallback, ProgressCallback, Trainer,
                              TrainingArguments)

    device = pick_device(settings.device)
    dtype = pick_dtype(settings.precision, device)
    tok = load_tokenizer(base)  # first: it also silences the weights-loading bar
    dataset, tokens = build_dataset(rows, layout, tok, settings.seq_len)
    ckpt_dir = arm_dir / "checkpoints"
    resume, resumed_step = last_checkpoint(ckpt_dir, remove_incomplete=True)
    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=settings.steps(), per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler, warmup_steps=settings.warmup_steps(),
        weight_decay=settings.weight_decay, seed=seed, data_seed=seed, logging_steps=1,
        save_strategy="steps", save_steps=settings.checkpoint_every(), save_total_limit=settings.save_total_limit,
        report_to="none", use_cpu=device == "cpu", bf16=dtype == torch.bfloat16 and device == "cuda",
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate(tok.pad_token_id))
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    if progress:
        trainer.add_callback(_progress_callback(label))
    first = _FirstStep()
    trainer.add_callback(first)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - t0
    losses = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
              for h in trainer.state.log_history if "loss" in h]
    tmp = arm_dir / "final.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tok.save_pretrained(str(tmp))
    info = {"steps": trainer.state.global_step, "resumed_from_step": resumed_step, "device": device,
            "dtype": str(dtype).replace("torch.", ""), "train_examples": len(dataset),
            "train_example_tokens": tokens, "epochs": trainer.state.epoch,
            "tokens_seen": trainer.state.global_step * settings.tokens_per_step() if layout == "text" else None,
            "loss_first": losses[0]["loss"] if losses else None, "loss_last": losses[-1]["loss"] if losses else None,
            "first_step_this_process": first.step, "train_loss": result.training_loss, "losses": losses, "train_s_this_process": round(wall, 3)}
    (tmp / TRAIN_NAME).write_text(json.dumps(info, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return info
