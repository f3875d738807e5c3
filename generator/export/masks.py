"""Training masks of the `messages` layout: which messages a model is trained on, the user
simulator's side of a conversation, and the trained character ranges of the messages rendered
through a chat template.

Each message carries `train`: true for the side trained on (the assistant's turns, tool calls
included), false for the rest (system prompts, user or simulated-user turns, tool results).
`side="user"` turns a conversation around for training a user simulator: the simulator's prompt,
then its own turns as `assistant` messages (trained) and the assistant's answers as `user`
messages, exactly as the simulator saw them while generating.

With a chat template, each row is rendered to `text`, and `train_spans` lists the [start, end)
character ranges trained on. A template that marks assistant text with `{% generation %}` gives
them itself (`apply_chat_template(..., return_assistant_tokens_mask=True)`); any other is rendered
prefix by prefix (a trained message's range runs from the end of the conversation before it, with
the generation prompt, to the end of the conversation with it), which holds when rendering a
longer conversation only appends; a template for which it does not hold is refused.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from generator.core.errors import SynthgenError

log = logging.getLogger(__name__)

SIDES = ("assistant", "user")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
FIRST_USER_TURN = "Write your first message."  # what the simulator is asked when its prompt ends otherwise


class MaskError(SynthgenError):
    """A chat template that cannot give training masks, or one that cannot be loaded."""


def with_train(messages: list[dict]) -> list[dict]:
    """Every message with its `train` flag: the assistant's turns only."""
    return [{**m, "train": m.get("role") == "assistant"} for m in messages]


def user_side(conversation: list[dict], simulator_prompt: list[dict] | None, closing: str | None = None) -> list[dict]:
    """The simulator's view of a finished conversation (the inverse of what the assistant saw):
    its prompt, its turns as `assistant`, the answers as `user`, and its closing turn (the one that
    ended the chat with the stop marker). The conversation's system prompt is the assistant's and
    is left out; a trailing answer no simulator turn follows is dropped."""
    flip = {"user": "assistant", "assistant": "user"}
    head = [dict(m) for m in simulator_prompt or []]
    if not head or head[-1]["role"] != "user":
        head.append({"role": "user", "content": FIRST_USER_TURN})
    body = [{"role": flip[m["role"]], "content": m.get("content") or ""} for m in conversation
            if m.get("role") in flip]
    if closing:
        body.append({"role": "assistant", "content": closing})
    while body and body[-1]["role"] != "assistant":
        body.pop()
    return head + body


def load_tokenizer(name: str) -> Any:
    """The tokenizer (with its chat template) of a model alias, local folder or cached Hub id."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MaskError("--chat-template needs transformers; install it with `pip install -e \".[probe]\"`") from None
    from generator.core.model_aliases import tokenizer_source

    folder, gguf = tokenizer_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(
            folder, local_files_only=not Path(folder).exists())
    except (OSError, ValueError) as exc:
        raise MaskError(f"--chat-template {name}: no tokenizer found ({str(exc).splitlines()[0]}); give a model "
                        f"alias, a local model folder, or a Hub id already in the local cache") from None
    if not getattr(tok, "chat_template", None):
        raise MaskError(f"--chat-template {name}: this tokenizer has no chat template; name a chat model")
    return tok


def marks_generation(tok: Any) -> bool:
    template = tok.chat_template if isinstance(tok.chat_template, str) else json.dumps(tok.chat_template)
    return bool(GENERATION_TAG.search(template))


def _render(tok: Any, messages: list[dict], tools: list | None, prompt: bool = False) -> str:
    plain = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    return tok.apply_chat_template(plain, tools=tools or None, tokenize=False, add_generation_prompt=prompt)


def _merge(spans: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        elif e > s:
            out.append([s, e])
    return out


def template_spans(tok: Any, messages: list[dict], tools: list | None) -> tuple[str, list[list[int]]]:
    """Rendered text and the character ranges the template marks with `{% generation %}`."""
    plain = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    enc = tok.apply_chat_template(plain, tools=tools or None, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    text = _render(tok, messages, tools)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(offsets["input_ids"]) != list(enc["input_ids"]):
        raise MaskError("the rendered text does not tokenize back to the template's tokens")
    mask = enc["assistant_masks"]
    return text, _merge([list(o) for o, keep in zip(offsets["offset_mapping"], mask) if keep])


def prefix_spans(tok: Any, messages: list[dict], tools: list | None) -> tuple[str, list[list[int]]] | None:
    """Rendered text and the ranges of the messages flagged `train`, by rendering prefixes; None
    when a longer conversation does not render as an extension of a shorter one."""
    text = _render(tok, messages, tools)
    spans = []
    for i, m in enumerate(messages):
        if not m.get("train"):
            continue
        before = _render(tok, messages[:i], tools, prompt=True) if i else ""
        upto = _render(tok, messages[:i + 1], tools)
        if not (upto.startswith(before) and text.startswith(upto)):
            return None
        spans.append([len(before), len(upto)])
    return text, _merge(spans)


class MaskRenderer:
    """Renders rows through one tokenizer's chat template; `method` says how masks were found."""

    def __init__(self, name: str):
        self.name = name
        self.tok = load_tokenizer(name)
        # the marks map to characters through token offsets, which only fast tokenizers give
        fast = getattr(self.tok, "is_fast", False)
        self.method = "generation" if marks_generation(self.tok) and fast else "prefix"

    def render(self, messages: list[dict], tools: list | None) -> tuple[str, list[list[int]]]:
        if self.method == "generation":
            return template_spans(self.tok, messages, tools)
        got = prefix_spans(self.tok, messages, tools)
        if got is None:
            raise MaskError(f"--chat-template {self.name}: the template has no {{% generation %}} marks and "
                            f"rewrites earlier turns as a conversation grows, so the trained ranges cannot be "
                            f"found; export without --chat-template (masks per message, `train`)")
        return got
