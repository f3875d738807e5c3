"""Prompt templates: Jinja files with YAML front matter, rendered in a sandbox.

A template file looks like::

    ---
    name: math/word_problem
    description: A grade-school word problem with a worked solution.
    purpose: math                 # pretraining | sft | math | scoring
    variables: [subtopic, keywords, persona]
    system: You are a careful math teacher.   # optional, itself a Jinja string
    choices:                      # optional: one value drawn per record, recorded in lineage
      style: [narrative, academic]
    topics_per_prompt: 1          # >1 fills `topics` with extra topic cells (multi-topic)
    personas_per_prompt: 1        # >1 fills `personas` with a random persona set
    output_schema: {...}          # optional JSON schema, enforced by structured decoding
    renderer: textbook_mcq        # optional: turns the JSON answer into training text
    ---
    Write a word problem about {{ subtopic }} ...

Variables referenced by the body and the system prompt are found statically
(`jinja2.meta`) and checked against what the plan provides before any model call; rendering
uses StrictUndefined, so a misspelt attribute (`persona.ocupation`) fails at validate time too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from generator.core.errors import TemplateError
from generator.core.yaml_loader import load_yaml

FRONT_MATTER_KEYS = {
    "name", "description", "purpose", "variables", "system", "choices", "topics_per_prompt",
    "personas_per_prompt", "output_schema", "renderer", "tags",
}
PURPOSES = {"pretraining", "sft", "math", "scoring", "general"}


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["bullets"] = lambda items, mark="- ": "\n".join(f"{mark}{i}" for i in items)
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


ENV = _env()


@dataclass
class Template:
    name: str
    path: Path
    body: str
    body_line: int  # 1-based line where the body starts, for error positions
    description: str = ""
    purpose: str = "general"
    variables: list[str] = field(default_factory=list)
    system: str | None = None
    choices: dict[str, list[Any]] = field(default_factory=dict)
    topics_per_prompt: int = 1
    personas_per_prompt: int = 1
    output_schema: dict | None = None
    renderer: str | None = None
    tags: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def hash(self) -> str:
        """Content hash of the whole file: lineage records which version produced a row."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def _compile(self, text: str, line_offset: int) -> jinja2.Template:
        try:
            return ENV.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error: {exc.message}", file=self.path,
                                line=line_offset + (exc.lineno or 1) - 1) from None

    def referenced_variables(self) -> set[str]:
        names: set[str] = set()
        for text, line in ((self.body, self.body_line), (self.system or "", 1)):
            try:
                names |= meta.find_undeclared_variables(ENV.parse(text))
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"template syntax error: {exc.message}", file=self.path,
                                    line=line + (exc.lineno or 1) - 1) from None
        return names

    def check_variables(self, available: set[str], where: str = "") -> None:
        """Fail before any model call if the template uses a variable nobody provides."""
        missing = sorted(self.referenced_variables() - available)
        if missing:
            hint = {
                "persona": "add a `personas:` section to the spec",
                "personas": "add a `personas:` section to the spec",
            }
            fixes = "; ".join(hint.get(m, f"define `{m}` under the spec's `vars:`") for m in missing)
            raise TemplateError(
                f"template '{self.name}' uses undefined variable(s) {', '.join(missing)}{where}; {fixes}",
                file=self.path, line=self.body_line)

    def render_messages(self, context: dict[str, Any]) -> list[dict[str, str]]:
        messages = []
        try:
            if self.system:
                messages.append({"role": "system",
                                 "content": self._compile(self.system, 1).render(context).strip()})
            user = self._compile(self.body, self.body_line).render(context).strip()
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template '{self.name}': {exc.message}; check the variable name "
                                f"against the spec (topics, personas, vars)", file=self.path,
                                line=self.body_line) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"template '{self.name}' tried an unsafe operation: {exc}",
                                file=self.path, line=self.body_line) from None
        if not user:
            raise TemplateError(f"template '{self.name}' rendered an empty prompt", file=self.path,
                                line=self.body_line)
        messages.append({"role": "user", "content": user})
        return messages


def parse_template(path: str | Path, name: str | None = None) -> Template:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError("template file not found; check the name or path", file=path) from None
    front: dict[str, Any] = {}
    body, body_line = source, 1
    if source.startswith("---"):
        lines = source.split("\n")
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        except StopIteration:
            raise TemplateError("front matter opened with '---' is never closed; add a line '---'",
                                file=path, line=1) from None
        located = load_yaml(path, "\n" * 1 + "\n".join(lines[1:end]))
        front = located.data or {}
        if not isinstance(front, dict):
            raise TemplateError("front matter must be a mapping", file=path, line=2)
        unknown = sorted(set(front) - FRONT_MATTER_KEYS)
        if unknown:
            line, col = located.where((unknown[0],))
            raise TemplateError(f"unknown front-matter key '{unknown[0]}'; allowed: "
                                f"{', '.join(sorted(FRONT_MATTER_KEYS))}", file=path, line=line, col=col)
        body = "\n".join(lines[end + 1:])
        body_line = end + 2
    purpose = front.get("purpose", "general")
    if purpose not in PURPOSES:
        raise TemplateError(f"purpose '{purpose}' is not one of {sorted(PURPOSES)}", file=path, line=2)
    choices = front.get("choices") or {}
    if not isinstance(choices, dict) or not all(isinstance(v, list) and v for v in choices.values()):
        raise TemplateError("`choices` must map each variable to a non-empty list", file=path, line=2)
    schema = front.get("output_schema")
    if schema is not None and not isinstance(schema, dict):
        raise TemplateError("`output_schema` must be a JSON schema mapping", file=path, line=2)
    tpl = Template(
        name=name or front.get("name") or path.stem,
        path=path, body=body, body_line=body_line,
        description=str(front.get("description", "")).strip(),
        purpose=purpose,
        variables=list(front.get("variables") or []),
        system=front.get("system"),
        choices=choices,
        topics_per_prompt=int(front.get("topics_per_prompt", 1)),
        personas_per_prompt=int(front.get("personas_per_prompt", 1)),
        output_schema=schema,
        renderer=front.get("renderer"),
        tags=list(front.get("tags") or []),
        source=source,
    )
    tpl.referenced_variables()  # surfaces syntax errors at load time
    declared = set(tpl.variables)
    if declared and not tpl.referenced_variables() <= declared | set(choices):
        extra = sorted(tpl.referenced_variables() - declared - set(choices))
        raise TemplateError(f"template uses {', '.join(extra)} but its front matter `variables:` "
                            f"does not declare them; add them to `variables:`", file=path, line=2)
    if tpl.output_schema is not None:
        _check_schema(tpl)
    return tpl


def _check_schema(tpl: Template) -> None:
    schema = tpl.output_schema
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise TemplateError("`output_schema` must be an object schema with `properties`",
                            file=tpl.path, line=2)
    try:
        import jsonschema  # optional: only for a deeper check
    except ImportError:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TemplateError(f"`output_schema` is not a valid JSON schema: {exc.message}",
                            file=tpl.path, line=2) from None
