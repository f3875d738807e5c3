"""Tools in the spec: `tools:` lists OpenAI-style function definitions, each with exactly one
implementation (a project Python function, a simulated tool, or an MCP server's tool).
See docs/conversations.md.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from generator.config.base import Strict

TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SimulateTool(Strict):
    """A model answers as the tool would, given its name, description and parameters."""

    model: str | None = Field(None, description="A model name from `models:`; default: the record's model.")
    instruction: str | None = Field(None, description="Extra guidance for the simulating model (what the tool "
                                    "knows, how its answers look).")


class McpTool(Strict):
    """A tool served by a stdio MCP server (started once per run, in the project folder)."""

    command: list[str] = Field(min_length=1, description="The server's argv, e.g. [python, tools/server.py].")
    tool: str | None = Field(None, description="The server's tool name; default: this tool's `name`.")


class ToolDef(Strict):
    name: str = Field(pattern=TOOL_NAME, description="Function name the model calls (letters, digits, _ and -).")
    description: str = Field(min_length=1, description="What the tool does, shown to the model.")
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}},
                                       description="JSON Schema of the arguments object (type: object).")
    python: str | None = Field(None, description="`module:function` from the project, called with the "
                               "arguments as keywords in a worker process (cwd: the project folder).")
    simulate: SimulateTool | None = Field(None, description="A model plays the tool.")
    mcp: McpTool | None = Field(None, description="A stdio MCP server's tool.")

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]):
        import jsonschema

        if v.get("type") != "object":
            raise ValueError("`parameters` must be a JSON Schema with `type: object` (the arguments object); "
                             "e.g. {type: object, properties: {x: {type: number}}, required: [x]}")
        try:
            jsonschema.Draft202012Validator.check_schema(v)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"`parameters` is not a valid JSON Schema ({exc.message}); fix the schema") from None
        return v

    @model_validator(mode="after")
    def _one_impl(self):
        given = [k for k in ("python", "simulate", "mcp") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"tool '{self.name}' needs exactly one of `python:`, `simulate:` or `mcp:` "
                             f"(has {', '.join(given) or 'none'}); keep one")
        if self.python is not None and not _REF.match(self.python):
            raise ValueError(f"tool '{self.name}': `python` must be `module:function` (e.g. tools.math:calculate)")
        return self

    @property
    def kind(self) -> str:
        return "python" if self.python else "simulate" if self.simulate else "mcp"

    def openai(self) -> dict[str, Any]:
        """The definition in the form chat APIs and `apply_chat_template(tools=...)` take."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}
