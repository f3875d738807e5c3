"""The Jinja sandbox prompts render in: confined includes and resource limits.

Templates are shared like code, so a template must not read files outside the template roots
(`{% include %}`, `{% extends %}`, `{% import %}` go through ConfinedLoader) nor exhaust memory
or time: ranges, string and list repetition, concatenation, format widths and integer powers are
bounded, the rendered text is capped at MAX_OUTPUT characters, and a render in the main thread
stops after MAX_SECONDS (docs/security.md).
"""
from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from generator.core.confine import Confinement
from generator.core.errors import SpecError
from generator.core.textfile import read_text

MAX_RANGE = 10_000         # items in one range()
MAX_LOOP_ITEMS = 1_000_000  # items of all range() calls in one render
MAX_OUTPUT = 1_000_000     # characters of a rendered prompt, and of any string or list built in one
MAX_ARG = 100_000          # integer arguments of calls and filters (widths, counts)
MAX_POW_BITS = 4_096       # bits of an integer power
MAX_SECONDS = 5.0          # one render, when rendering in the main thread


class LimitError(SecurityError):
    """A template went over one of the sandbox's resource limits."""


class ConfinedError(SecurityError):
    """A template named a file outside the template roots."""


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, list, tuple, bytes)) else 0


def _check_int(v: Any, what: str) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_ARG:
        raise LimitError(f"{what} {v} is above the sandbox limit of {MAX_ARG:,}")


_FORMAT_NUMBER = re.compile(r"\d+")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str):
        for spec in re.findall(r"\{[^{}]*\}|%[^a-zA-Z%]*[a-zA-Z%]", fmt):
            for n in _FORMAT_NUMBER.findall(spec):
                _check_int(int(n), "format width")


class _State(threading.local):
    loop_items = 0


_STATE = _State()


def _range(*args: int) -> range:
    for a in args:
        _check_int(a, "range() bound")
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise LimitError(f"range() of {len(r):,} items is above the sandbox limit of {MAX_RANGE:,}")
    _STATE.loop_items += len(r)
    if _STATE.loop_items > MAX_LOOP_ITEMS:
        raise LimitError(f"loops over more than {MAX_LOOP_ITEMS:,} items in one prompt")
    return r


def _guard_filter(fn: Callable) -> Callable:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) else 1  # (context,) value: not size arguments

    def guarded(*args: Any, **kwargs: Any) -> Any:
        for a in list(args[skip:]) + list(kwargs.values()):
            _check_int(a, "filter argument")
        out = fn(*args, **kwargs)
        if _size(out) > MAX_OUTPUT:
            raise LimitError(f"a filter built {_size(out):,} characters, above the limit of {MAX_OUTPUT:,}")
        return out

    for attr in ("jinja_pass_arg",):  # keep context/environment passing markers
        if hasattr(fn, attr):
            setattr(guarded, attr, getattr(fn, attr))
    return guarded


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old) if old else len(s) + 1
        if len(s) + hits * max(len(new) - len(old), 0) > MAX_OUTPUT:
            raise LimitError(f"replace() would build over {MAX_OUTPUT:,} characters")


def _check_join(items: Any, sep: Any = "") -> None:
    if isinstance(items, (list, tuple)):
        total = sum(len(i) if isinstance(i, str) else 16 for i in items) + len(str(sep)) * len(items)
        if total > MAX_OUTPUT:
            raise LimitError(f"join() would build over {MAX_OUTPUT:,} characters")


def _guard_join(fn: Callable) -> Callable:
    def guarded(eval_ctx, value, d="", attribute=None):
        _check_join(value if isinstance(value, (list, tuple)) else None, d)
        return fn(eval_ctx, value, d, attribute)

    guarded.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        # `a ~ b` has no sandbox hook of its own: route it through one that checks the size
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})
    code_generator_class = _CodeGenerator

    def checked_concat(self, parts: tuple) -> str:
        texts = [p if isinstance(p, str) else str(p) for p in parts]
        if sum(map(len, texts)) > MAX_OUTPUT:
            raise LimitError(f"a string of over {MAX_OUTPUT:,} characters")
        return "".join(texts)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int) and _size(seq) * n > MAX_OUTPUT:
                    raise LimitError(f"repeating {_size(seq):,} items {n:,} times is above the limit of "
                                     f"{MAX_OUTPUT:,}")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                    max(abs(left), 2).bit_length() * right > MAX_POW_BITS:
                raise LimitError(f"{left} ** {right} is above the sandbox's integer size limit")
        elif operator == "+":
            if _size(left) + _size(right) > MAX_OUTPUT:
                raise LimitError(f"a string or list of over {MAX_OUTPUT:,} items")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
            for a in right if isinstance(right, tuple) else (right,):
                _check_int(a, "format argument")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        for a in list(args) + list(kwargs.values()):
            _check_int(a, "argument")
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1])
        elif isinstance(owner, str) and name == "join" and args:
            _check_join(list(args[0]) if isinstance(args[0], (list, tuple)) else None, owner)
        out = super().call(__context, __obj, *args, **kwargs)
        if _size(out) > MAX_OUTPUT:
            raise LimitError(f"a call built {_size(out):,} items, above the limit of {MAX_OUTPUT:,}")
        return out

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(getattr(value, "__self__", None))
        return wrapped


def _front_matter_as_comment(text: str) -> str:
    """An included file's front matter becomes a Jinja comment of as many lines (positions stay)."""
    if not text.startswith("---"):
        return text
    lines = text.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        return text
    return "{#" + "\n" * end + "#}" + "\n".join([""] + lines[end + 1:])


class ConfinedLoader(jinja2.BaseLoader):
    """Template names (`partials/header.j2`) resolve only inside the template roots."""

    def __init__(self, roots: tuple[Path, ...], confine: Confinement | None):
        self.roots = roots
        self.confine = confine

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable]:
        parts = template.replace("\\", "/").split("/")
        if template.startswith(("/", "\\")) or ".." in parts or "\x00" in template or ":" in parts[0]:
            raise ConfinedError(f"'{template}' is not a template name inside the template folders (no "
                                f"absolute paths or '..'); name it relative to templates/")
        for root in self.roots:
            path = root.joinpath(*parts)
            if not path.is_file():
                continue
            real = path.resolve()
            allowed = self.confine.permits(real) if self.confine else any(
                real == r or r in real.parents for r in (x.resolve() for x in self.roots))
            if not allowed:
                raise ConfinedError(f"'{template}' resolves to {real}, outside the project and the built-in "
                                    f"library; copy it into templates/ or allow its folder with --allow-path")
            text = _front_matter_as_comment(read_text(real, "template"))
            mtime = real.stat().st_mtime
            return text, str(real), lambda: real.exists() and real.stat().st_mtime == mtime
        raise jinja2.TemplateNotFound(template)


def _tojson(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


_ENVS: dict[tuple, Sandbox] = {}


def sandbox(roots: tuple[Path, ...] = (), confine: Confinement | None = None) -> Sandbox:
    """The sandbox for these template roots (one per distinct set, reused)."""
    key = (roots, confine)
    env = _ENVS.get(key)
    if env is None:
        env = Sandbox(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=False, autoescape=False, loader=ConfinedLoader(roots, confine))
        env.globals.pop("lipsum", None)  # lipsum(n) builds n paragraphs: nothing a prompt needs
        env.globals["range"] = _range
        env.filters["join"] = _guard_join(env.filters["join"])
        replace = env.filters["replace"]

        def checked_replace(eval_ctx, s, old, new, count=None):
            _check_replace(str(s), str(old), str(new))
            return replace(eval_ctx, s, old, new, count)

        checked_replace.jinja_pass_arg = replace.jinja_pass_arg  # type: ignore[attr-defined]
        env.filters["replace"] = checked_replace
        for name in ("center", "indent", "wordwrap", "truncate", "batch", "slice", "format", "join",
                     "replace", "filesizeformat", "round"):
            env.filters[name] = _guard_filter(env.filters[name])
        env.filters["bullets"] = lambda items, mark="- ": "\n".join(f"{mark}{i}" for i in items)
        env.filters["tojson"] = _tojson
        _ENVS[key] = env
    return env


class _TimeLimit:
    """SIGALRM after `seconds` while a render runs (a class, not a generator: it runs per prompt).
    Only on the main thread, and only when nobody else uses the real-time timer (a test runner's
    timeout, an application's own)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.previous: Any = None
        self.armed = False

    def _stop(self, signum, frame):
        raise LimitError(f"rendering took over {self.seconds:g} s; simplify the template's loops")

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer") \
                or signal.getitimer(signal.ITIMER_REAL)[0] or signal.getsignal(signal.SIGALRM) not in (
                    signal.SIG_DFL, None):
            return
        self.previous = signal.signal(signal.SIGALRM, self._stop)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.armed = True

    def __exit__(self, *exc) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.armed = False


def render_limited(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render with the output cap, the loop budget and (main thread) the time limit."""
    _STATE.loop_items = 0
    parts: list[str] = []
    total = 0
    with _TimeLimit(MAX_SECONDS):
        for chunk in template.generate(context):
            total += len(chunk)
            if total > MAX_OUTPUT:
                raise LimitError(f"the prompt is over {MAX_OUTPUT:,} characters; shorten the template")
            parts.append(chunk)
    return "".join(parts)


def error_line(exc: BaseException, body_file: str | None = None) -> tuple[str | None, int | None]:
    """(file, line) of the deepest template frame in `exc`'s traceback; body_file for '<template>'."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.filename or body_file, exc.lineno
    found: tuple[str | None, int | None] = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == "<template>" or name.endswith((".j2", ".jinja", ".txt", ".md")):
            found = (None if name == "<template>" else name, tb.tb_lineno)
        tb = tb.tb_next
    return found


def spec_error_for(exc: BaseException, tpl_name: str, tpl_path: Path, body_line: int,
                   lineno: int | None, file: str | None) -> SpecError:
    """One line for a template failure; `lineno` is relative to the body when `file` is None."""
    from generator.core.errors import TemplateError

    where_file = Path(file) if file else tpl_path
    line = (body_line + lineno - 1 if file is None else lineno) if lineno else body_line
    if isinstance(exc, jinja2.TemplateNotFound):
        msg = (f"template '{tpl_name}' includes '{exc.name}', which is not in the template folders "
               f"(the project's templates/ and the built-in library); fix the name")
    elif isinstance(exc, jinja2.TemplateSyntaxError):
        msg = f"template syntax error: {exc.message}; fix the tag there"
    elif isinstance(exc, jinja2.UndefinedError):
        msg = (f"template '{tpl_name}': {exc.message}; check the variable name against the spec "
               f"(topics, personas, vars)")
    elif isinstance(exc, LimitError):
        msg = f"template '{tpl_name}': {exc}; make the template smaller (docs/security.md lists the limits)"
    elif isinstance(exc, ConfinedError):
        msg = f"template '{tpl_name}': {exc}"
    elif isinstance(exc, SecurityError):
        msg = f"template '{tpl_name}' tried an unsafe operation: {exc}; remove it"
    elif isinstance(exc, (OverflowError, MemoryError, RecursionError)):
        msg = f"template '{tpl_name}' is too large to render ({type(exc).__name__}); simplify it"
    else:
        msg = f"template '{tpl_name}' failed to render: {type(exc).__name__}: {exc}; fix the expression there"
    return TemplateError(" ".join(msg.split()), file=where_file, line=line)
