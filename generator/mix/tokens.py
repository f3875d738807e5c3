"""The training tokenizer: loading it, and counting / encoding documents (one EOS each)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from generator.core.errors import SynthgenError
from generator.core.wordcount import ENCODE_BATCH
from generator.mix.digest import file_sha256

DEFAULT_TOKENIZER = "smollm2-135m"


def is_tokenizer_alias(name: str) -> bool:
    """Whether `name` is a model alias (such as smollm2-135m) rather than a path."""
    from generator.core.model_aliases import is_alias

    return is_alias(name)


@dataclass
class TokenizerInfo:
    tokenizer: Any  # tokenizers.Tokenizer
    path: Path  # the tokenizer.json
    sha256: str
    eos_token: str
    eos_id: int
    vocab_size: int
    chat_template: str | None = None
    special: dict = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        """Megatron's DType.optimal_dtype: uint16 below 65,500 ids, int32 above."""
        return np.dtype(np.uint16) if self.vocab_size < 65500 else np.dtype(np.int32)


def load_tokenizer(spec: str | Path | None = None, eos_token: str | None = None) -> TokenizerInfo:
    """A tokenizer folder, a tokenizer.json, or a model alias (default: the embedded model)."""
    from tokenizers import Tokenizer

    name = str(spec) if spec is not None else DEFAULT_TOKENIZER
    p = Path(name).expanduser()
    if not p.exists():
        if is_tokenizer_alias(name):
            from generator.core.model_aliases import resolve_tokenizer_path

            p = Path(resolve_tokenizer_path(name))
        else:
            raise SynthgenError(f"tokenizer {name!r} not found; give a folder with tokenizer.json, a "
                                f"tokenizer.json file, or a model alias such as {DEFAULT_TOKENIZER}")
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise SynthgenError(f"{p}: no tokenizer.json (only fast tokenizers are supported)")
    tok = Tokenizer.from_file(str(file))
    folder = file.parent
    cfg: dict = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except ValueError:
            cfg = {}

    def tok_str(v: Any) -> str | None:
        return v.get("content") if isinstance(v, dict) else v

    special = {k: tok_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if tok_str(cfg.get(k))}
    if eos_token is None:
        for cand in ("<|endoftext|>", special.get("eos_token"), "</s>", "<eos>", "<|end_of_text|>"):
            if cand and tok.token_to_id(cand) is not None:
                eos_token = cand
                break
        else:
            raise SynthgenError(f"{file}: cannot tell the end-of-document token; set eos_token in the mix config")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise SynthgenError(f"eos_token {eos_token!r} is not in the vocabulary of {file}")
    chat = None
    if (folder / "chat_template.jinja").is_file():
        chat = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(cfg.get("chat_template"), str):
        chat = cfg["chat_template"]
    return TokenizerInfo(tokenizer=tok, path=file.resolve(), sha256=file_sha256(file), eos_token=eos_token,
                         eos_id=eos_id, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                         chat_template=chat, special=special)


def _encode(tok: Any, texts: list[str]) -> list:
    fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    return fn(texts, add_special_tokens=False)


def count_tokens(texts: Sequence[str | None], tokenizer: TokenizerInfo | Any, add_eos: bool = True) -> np.ndarray:
    """Tokens per document (int64), +1 EOS each when add_eos; None entries give -1."""
    tok = tokenizer.tokenizer if isinstance(tokenizer, TokenizerInfo) else tokenizer
    out = np.full(len(texts), -1, dtype=np.int64)
    idx = [i for i, t in enumerate(texts) if t is not None]
    for start in range(0, len(idx), ENCODE_BATCH):
        chunk = idx[start:start + ENCODE_BATCH]
        enc = _encode(tok, [texts[i] for i in chunk])
        out[chunk] = [len(e) for e in enc]
    if add_eos:
        out[out >= 0] += 1
    return out


def encode_documents(texts: Sequence[str], tokenizer: TokenizerInfo) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the documents, each followed by EOS, concatenated; plus per-document lengths."""
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    eos = tokenizer.eos_id
    for start in range(0, len(texts), ENCODE_BATCH):
        enc = _encode(tokenizer.tokenizer, list(texts[start:start + ENCODE_BATCH]))
        flat: list[int] = []
        for e in enc:
            ids = e.ids
            flat += ids
            flat.append(eos)
            lengths.append(len(ids) + 1)
        parts.append(np.array(flat, dtype=tokenizer.dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=tokenizer.dtype)
    return ids, np.asarray(lengths, dtype=np.int64)
