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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes

from generator.core.confine import Confinement
from generator.core.errors import SpecError, TemplateError
from generator.core.textfile import read_text
from generator.core.yaml_loader import load_yaml
from generator.library.sandbox import error_line, render_limited, sandbox, spec_error_for

FRONT_MATTER_KEYS = {
    "name", "description", "purpose", "variables", "system", "choices", "topics_per_prompt",
    "personas_per_prompt", "output_schema", "renderer", "tags",
}
PURPOSES = {"pretraining", "sft", "math", "scoring", "general"}


def default_roots(path: Path) -> tuple[Path, ...]:
    """Template roots for a file loaded on its own: its nearest `templates/` folder, the built-in one."""
    from generator.core.paths import builtin_root

    path = Path(path).absolute()
    own = next((p for p in path.parents if p.name == "templates"), path.parent)
    return tuple(dict.fromkeys((own, builtin_root("templates"))))


ENV = sandbox()


_JINJA = re.compile(r"\{[{%#]")  # where Jinja syntax starts


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
    env: Any = field(default=None, repr=False, compare=False)

    @property
    def hash(self) -> str:
        """Content hash of the whole file: lineage records which version produced a row."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def _env(self):
        return self.env or ENV

    def _error(self, exc: BaseException, line_offset: int) -> SpecError:
        file, lineno = error_line(exc)
        return spec_error_for(exc, self.name, self.path, line_offset, lineno, file)

    def _compile(self, text: str, line_offset: int) -> jinja2.Template:
        try:
            return self._env.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(exc, line_offset) from None

    def _parse(self, text: str, line: int) -> nodes.Template:
        try:
            return self._env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(exc, line) from None

    def referenced_variables(self) -> set[str]:
        names: set[str] = set()
        for text, line in ((self.body, self.body_line), (self.system or "", 1)):
            names |= meta.find_undeclared_variables(self._parse(text, line))
        return names

    def check_includes(self) -> None:
        """Load every template named literally by include/extends/import: a missing, refused or broken
        one fails now, at load, with the line of the tag."""
        for text, line in ((self.body, self.body_line), (self.system or "", 1)):
            for node in self._parse(text, line).find_all((nodes.Include, nodes.Extends, nodes.Import,
                                                          nodes.FromImport)):
                ref = node.template
                if not isinstance(ref, nodes.Const) or not isinstance(ref.value, str):
                    continue
                try:
                    self._env.get_template(ref.value)
                except SpecError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every template failure is one line
                    file, lineno = error_line(exc)
                    if file is None:
                        lineno = node.lineno
                    raise spec_error_for(exc, self.name, self.path, line, lineno, file) from None

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

    def _compiled(self, text: str, line: int) -> jinja2.Template:
        cache = self.__dict__.setdefault("_compiled_cache", {})
        if text not in cache:
            cache[text] = self._compile(text, line)
        return cache[text]

    def render_messages(self, context: dict[str, Any]) -> list[dict[str, str]]:
        messages = []
        if self.system:
            try:
                # a system prompt without Jinja syntax is its own text: no render per prompt
                system = self.system.strip() if not _JINJA.search(self.system) else \
                    render_limited(self._compiled(self.system, 1), context).strip()
            except SpecError:
                raise
            except Exception as exc:  # noqa: BLE001 - every template failure is one line
                raise self._error(exc, 1) from None
            messages.append({"role": "system", "content": system})
        try:
            user = render_limited(self._compiled(self.body, self.body_line), context).strip()
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, self.body_line) from None
        if not user:
            raise TemplateError(f"template '{self.name}' rendered an empty prompt; give it some text", file=self.path,
                                line=self.body_line)
        messages.append({"role": "user", "content": user})
        return messages


def parse_template(path: str | Path, name: str | None = None, roots: tuple[Path, ...] | None = None,
                   confine: Confinement | None = None) -> Template:
    """Load a template file; includes resolve in `roots` (default: its templates/ folder and the
    built-in one) and, with `confine`, only inside the confinement's folders."""
    path = Path(path)
    source = read_text(path, "template file")
    front: dict[str, Any] = {}
    located = None
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
            raise TemplateError("front matter must be a mapping; write `key: value` lines between the --- lines", file=path, line=2)
        unknown = sorted(set(front) - FRONT_MATTER_KEYS, key=str)
        if unknown:
            line, col = located.where((unknown[0],))
            raise TemplateError(f"unknown front-matter key '{unknown[0]}'; allowed: "
                                f"{', '.join(sorted(FRONT_MATTER_KEYS))}", file=path, line=line, col=col)
        body = "\n".join(lines[end + 1:])
        body_line = end + 2
    _check_front(front, located, path)
    purpose = front.get("purpose", "general")
    if purpose not in PURPOSES:
        raise TemplateError(f"purpose '{purpose}' is not one of {sorted(PURPOSES)}; pick one", file=path, line=2)
    choices = front.get("choices") or {}
    if not isinstance(choices, dict) or not all(isinstance(v, list) and v for v in choices.values()):
        raise TemplateError("`choices` must map each variable to a non-empty list; fix the value", file=path, line=2)
    schema = front.get("output_schema")
    if schema is not None and not isinstance(schema, dict):
        raise TemplateError("`output_schema` must be a JSON schema mapping; fix the value", file=path, line=2)
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
        env=sandbox(roots or default_roots(path), confine),
    )
    tpl.referenced_variables()  # surfaces syntax errors at load time
    tpl.check_includes()
    declared = set(tpl.variables)
    if declared and not tpl.referenced_variables() <= declared | set(choices):
        extra = sorted(tpl.referenced_variables() - declared - set(choices))
        raise TemplateError(f"template uses {', '.join(extra)} but its front matter `variables:` "
                            f"does not declare them; add them to `variables:`", file=path, line=2)
    if tpl.output_schema is not None:
        _check_schema(tpl)
    return tpl


_FRONT_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "description": (str,), "purpose": (str,), "variables": (list,), "system": (str,),
    "choices": (dict,), "topics_per_prompt": (int,), "personas_per_prompt": (int,), "output_schema": (dict,),
    "renderer": (str,), "tags": (list,),
}


def _check_front(front: dict, located: Any, path: Path) -> None:
    """Types of front-matter values, and a renderer that exists and has a schema to render."""
    from generator.library.renderers import RENDERERS

    def fail(key: str, message: str) -> TemplateError:
        line, col = located.where((key,)) if located is not None else (1, None)
        return TemplateError(message, file=path, line=line, col=col)

    for key, types in _FRONT_TYPES.items():
        value = front.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            kind = {"str": "string", "int": "whole number", "list": "list", "dict": "mapping"}[types[0].__name__]
            raise fail(key, f"front-matter `{key}` must be a {kind}, got {type(value).__name__}; fix the value")
        if types == (int,) and not 1 <= value <= 64:
            raise fail(key, f"front-matter `{key}` must be between 1 and 64; fix the value")
        if key in ("variables", "tags") and not all(isinstance(v, str) for v in value):
            raise fail(key, f"front-matter `{key}` must be a list of names; fix the value")
    renderer = front.get("renderer")
    if renderer is not None:
        if renderer not in RENDERERS:
            raise fail("renderer", f"unknown renderer '{renderer}'; known renderers: {', '.join(sorted(RENDERERS))}")
        if front.get("output_schema") is None:
            raise fail("renderer", f"renderer '{renderer}' renders a JSON answer, but the template has no "
                                   f"`output_schema`; add one or remove `renderer:`")


def _check_schema(tpl: Template) -> None:
    schema = tpl.output_schema
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise TemplateError("`output_schema` must be an object schema with `properties`; add `type: object` and `properties:`",
                            file=tpl.path, line=2)
    try:
        import jsonschema  # optional: only for a deeper check
    except ImportError:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TemplateError(f"`output_schema` is not a valid JSON schema: {exc.message}; fix the schema",
                            file=tpl.path, line=2) from None
