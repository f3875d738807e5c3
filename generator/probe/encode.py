"""Token ids for training and evaluation, with the same conventions as `synthgen mix`.

Text: each document's ids with `add_special_tokens=False`, plus one EOS (the mix's counting rule).
Messages: the conversation rendered with the tokenizer's chat template; only assistant turns carry
labels (the rest are -100), so SFT learns the answers and not the prompts.
"""
from __future__ import annotations

from pathlib import Path

from generator.core.errors import SynthgenError

IGNORE = -100


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the probe draws its own bar; a weights bar per model load is noise

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def eos_id(tok) -> int:
    """<|endoftext|> when the vocabulary has it (the mix's default), else the tokenizer's EOS."""
    tid = tok.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tid, int) and tid != tok.unk_token_id and tid is not None and tid >= 0:
        return tid
    return tok.eos_token_id


def render_chat(tok, messages: list[dict], generation_prompt: bool) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)  # the mix's plain rendering
    return text + ("\nassistant: " if generation_prompt else "")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def pack_text(tok, texts: list[str], seq_len: int) -> list[list[int]]:
    """Documents joined with EOS into one stream, cut into full blocks of seq_len (continued pre-training)."""
    eos = eos_id(tok)
    stream: list[int] = []
    for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
        stream += ids + [eos]
    blocks = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not blocks:
        raise SynthgenError(f"the mix has {len(stream):,} tokens, fewer than one --seq-len block of {seq_len}; "
                            f"lower --seq-len or build a larger mix")
    return blocks


def encode_chat(tok, messages: list[dict], seq_len: int) -> tuple[list[int], list[int]]:
    """ids and labels of one conversation; labels only on assistant turns; cut to seq_len."""
    full = _ids(tok, render_chat(tok, messages, False))
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start = len(_ids(tok, render_chat(tok, messages[:i], True))) if i else 0
        end = len(_ids(tok, render_chat(tok, messages[: i + 1], False)))
        for j in range(start, min(end, len(full))):
            labels[j] = full[j]
    return full[:seq_len], labels[:seq_len]


def encode_item(tok, prompt: list[dict] | None, target: str, seq_len: int) -> tuple[list[int], list[int]]:
    """An evaluation item: whole text (+EOS), or an assistant answer to a prompt; loss on the target only."""
    if prompt is None:
        ids = (_ids(tok, target) + [eos_id(tok)])[:seq_len]
        return ids, list(ids)
    return encode_chat(tok, prompt + [{"role": "assistant", "content": target}], seq_len)


def collate(pad_id: int):
    """Right-pads input_ids (pad id), labels (-100) and builds the attention mask."""
    import torch

    def fn(batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        ids = [b["input_ids"] + [pad_id] * (n - len(b["input_ids"])) for b in batch]
        labels = [b["labels"] + [IGNORE] * (n - len(b["labels"])) for b in batch]
        mask = [[1] * len(b["input_ids"]) + [0] * (n - len(b["input_ids"])) for b in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}

    return fn
