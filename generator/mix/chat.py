"""Rendering a conversation to text the way the trainer sees it (for counting and the text layout)."""
from __future__ import annotations

import json

from generator.core.errors import SynthgenError
from generator.mix.digest import text_sha256
from generator.mix.tokens import TokenizerInfo


class ChatRenderer:
    """Renders a conversation the way the trainer will see it: the tokenizer's chat template."""

    def __init__(self, tokenizer: TokenizerInfo):
        self.source = tokenizer.chat_template
        self.special = tokenizer.special
        self._template = None
        if self.source:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise SynthgenError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.source)

    def describe(self) -> str:
        if self._template is None:
            return "plain 'role: content' lines joined by newlines (the tokenizer has no chat template)"
        return f"the tokenizer's chat template (sha256 {text_sha256(self.source)[:16]}), add_generation_prompt=False"

    def key(self) -> str:
        return text_sha256(self.source) if self.source else "plain"

    def __call__(self, messages: list[dict]) -> str:
        if self._template is None:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return self._template.render(messages=messages, add_generation_prompt=False, **self.special)
