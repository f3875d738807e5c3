"""YAML syntax errors as their cause, where the cause is, and the fix.

libyaml reports the symptom where the parser gave up: an unclosed quote at the end of the file,
a tab as "found character that cannot start any token", a mis-indented key as "mapping values are
not allowed here". `explain` maps each class back to the line and column where the problem starts
(the opening quote or bracket, the tab, the first character of the mis-indented line) and says
how to fix it. Anything it does not recognise keeps libyaml's wording, with its position.
"""
from __future__ import annotations

import re

import yaml

_FLOW_CLOSE = {"flow sequence": ("[", "]"), "flow mapping": ("{", "}")}


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blank(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def _char(lines: list[str], line: int, col: int) -> str:
    return lines[line][col] if 0 <= line < len(lines) and 0 <= col < len(lines[line]) else ""


def _close_quote(text: str, start: int) -> int:
    """Index of the quote closing the one at `start` (YAML rules: \\" escapes in double quotes,
    '' in single quotes), or -1 when the file ends first."""
    q, i = text[start], start + 1
    while i < len(text):
        c = text[i]
        if q == '"' and c == "\\":
            i += 2
            continue
        if c == q:
            if q == "'" and text[i + 1: i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    return -1


_VALUE_QUOTE = re.compile(r"""(?:^\s*(?:-\s+)*|:\s+|[\[{,]\s*|-\s+)(["'])""")


_BLOCK_SCALAR = re.compile(r"(?:^|:|-)\s*[|>][-+0-9]*\s*(?:#.*)?$")


def _unclosed_quote(text: str, error_line: int) -> tuple[int, int, str] | None:
    """A quote opened on a line and not closed there, whose YAML closing quote falls on the
    error's line (the quote the user meant to open next) or is missing: (line, col, quote), 0-based.
    Lines of block scalars (`key: |`) are text, not YAML, and are skipped."""
    offset = 0
    block = None  # indentation of the line that opened a block scalar
    for n, line in enumerate(_lines(text)):
        if n > error_line:
            break
        if block is not None and (not line.strip() or _indent(line) > block):
            offset += len(line) + 1
            continue
        block = _indent(line) if _BLOCK_SCALAR.search(line) else None
        if not _blank(line) and block is None:
            for m in _VALUE_QUOTE.finditer(line):
                start = offset + m.start(1)
                end = _close_quote(text, start)
                if end == -1 or text.count("\n", start, end):
                    end_line = text.count("\n", 0, end) if end != -1 else error_line
                    if end_line == error_line or end == -1:
                        return n, m.start(1), m.group(1)
                    break  # a legitimate multi-line string: not the cause
        offset += len(line) + 1
    return None


def _previous(lines: list[str], line: int) -> int | None:
    for n in range(line - 1, -1, -1):
        if not _blank(lines[n]):
            return n
    return None


_HAS_VALUE = re.compile(r"^\s*(?:-\s+)?[^#\s][^#]*?:\s+[^#\s]")  # `key: value` (not `key:` alone)


def _deeper(lines: list[str], prev: int) -> str:
    return (f"this line is indented deeper than line {prev + 1}, whose value is already written, so it "
            f"reads as part of that value; indent it like line {prev + 1} (column {_indent(lines[prev]) + 1}), "
            f"or to nest it leave line {prev + 1}'s value empty (key:)")


def explain(text: str, exc: yaml.MarkedYAMLError) -> tuple[int, int, str]:
    """(line, col, message) of a YAML syntax error, 1-based, message ending with the fix."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line, mark.column) if mark else (0, 0)
    problem = " ".join(str(exc.problem or exc).split())
    context = " ".join(str(exc.context or "").split())
    ctx = exc.context_mark
    lines = _lines(text)
    here = _char(lines, line, col)

    # A tab where indentation or a token is expected: point at the first tab of that line.
    if "tab" in problem or ("cannot start any token" in problem and here == "\t"):
        row = lines[line] if line < len(lines) else ""
        tab = row.find("\t")
        if tab != -1:
            return line + 1, tab + 1, ("a tab character where YAML expects spaces (it indents with spaces "
                                       "only); replace the tab with spaces")
    if "cannot start any token" in problem and here:
        return line + 1, col + 1, (f"'{here}' cannot start an unquoted value; put the value in quotes "
                                   f"(\"{here}...\")")

    # An unclosed quote: where it opens, not where the file ends.
    if "quoted scalar" in context and "end of stream" in problem and ctx is not None:
        q = _char(lines, ctx.line, ctx.column) or '"'
        return ctx.line + 1, ctx.column + 1, f"the {q} opened here is never closed; add the closing {q}"
    if "unknown escape" in problem:
        return line + 1, col + 1, ("a backslash in double quotes starts an escape and this one is not a "
                                   "YAML escape; write \\\\ for a backslash, or use single quotes")
    if problem.startswith(("did not find expected", "mapping values", "could not find expected", "expected")):
        found = _unclosed_quote(text, line)
        if found is not None:
            n, c, q = found
            return n + 1, c + 1, (f"the {q} opened here is not closed on its line, so the string runs on "
                                  f"to the next {q}; add the closing {q}")

    # An unclosed bracket or brace: where it opens.
    for kind, (open_, close) in _FLOW_CLOSE.items():
        if kind in context and ctx is not None:
            if here in ("]", "}") and here != close:
                return ctx.line + 1, ctx.column + 1, (f"the {open_} opened here is closed with '{here}' "
                                                      f"(line {line + 1}, column {col + 1}); close it with {close}")
            if line > ctx.line or "end of stream" in problem:
                return ctx.line + 1, ctx.column + 1, (f"the {open_} opened here is never closed; add the "
                                                      f"closing {close} (on the same line for a short list)")
            return line + 1, col + 1, (f"expected ',' or '{close}' here inside the {open_}...{close} that opens "
                                       f"at column {ctx.column + 1}; separate items with ', ' and quote an item "
                                       f"that holds ': ' or '{close}'")
    if here in ("]", "}") and problem.startswith("did not find expected"):
        return line + 1, col + 1, f"'{here}' closes nothing; remove it or add the matching opening bracket"

    # Indentation and structure: point at the first character of the offending line.
    first = _indent(lines[line]) if line < len(lines) else 0
    prev = _previous(lines, line)
    if problem.startswith("mapping values are not allowed"):
        before = lines[line][:col] if line < len(lines) else ""
        if re.search(r":\s", before) and not before.lstrip().startswith("#"):
            return line + 1, col + 1, ("a second ': ' in an unquoted value; put the value in quotes "
                                       "(key: \"a: b\")")
        if prev is not None and first > _indent(lines[prev]):
            return line + 1, first + 1, _deeper(lines, prev)
        return line + 1, col + 1, "a ':' that YAML cannot place here; put the value in quotes or fix the indentation"
    if problem.startswith("could not find expected ':'") and ctx is not None:
        return ctx.line + 1, _indent(lines[ctx.line]) + 1 if ctx.line < len(lines) else 1, (
            "this line has no ':'; write it as `key: value`, as a list item `- value`, or indent it under "
            "the key it continues")
    if problem.startswith(("did not find expected key", "did not find expected '-' indicator",
                           "expected <block end>")):
        row = lines[line] if line < len(lines) else ""
        if col > first and here not in ("-", "]", "}", ""):  # mid-line: text after a complete value
            after = " after a closing quote" if row[:col].rstrip()[-1:] in ("'", '"') else ""
            return line + 1, col + 1, (f"unexpected text{after} where the value should end; put the whole "
                                       f"value in quotes, or start a new line for a new key")
        in_list = problem.startswith("did not find expected '-'") and ctx is not None
        if in_list and first == ctx.column:
            return line + 1, first + 1, (f"a key inside the list that starts at line {ctx.line + 1}; start "
                                         f"this line with '- ' to make it an item, or indent it like the key "
                                         f"that holds the list to end the list")
        if here == "-" and prev is not None and lines[prev].lstrip().startswith("-"):
            return line + 1, col + 1, (f"this '- ' is at column {col + 1} but the item on line {prev + 1} at "
                                       f"column {_indent(lines[prev]) + 1}; line up the '- ' of one list")
        if here == "-":
            return line + 1, col + 1, ("a list item ('- ') where a key was expected; put it under a key "
                                       "that ends in ':' (indented), or write it as `key: value`")
        if prev is not None and first > _indent(lines[prev]) and _HAS_VALUE.search(lines[prev]):
            return line + 1, first + 1, _deeper(lines, prev)
        where = f" (line {prev + 1} starts at column {_indent(lines[prev]) + 1})" if prev is not None else ""
        return line + 1, first + 1, (f"this line's indentation (column {first + 1}) matches no key or list "
                                     f"item above it{where}; indent it exactly like the keys (or '- ' items) "
                                     f"it belongs with")
    if "undefined alias" in problem:
        m = re.match(r"\*([^\s,\]}]+)", lines[line][col:] if line < len(lines) else "")
        name = m.group(1) if m else "name"
        return line + 1, col + 1, (f"the alias *{name} refers to no anchor; define &{name} on a value above "
                                   f"it, or remove the alias")
    if "maximum nesting depth" in problem:
        return line + 1, col + 1, "nesting deeper than the YAML parser allows; flatten the structure"
    if "expected a single document" in context or "another document" in problem:
        return line + 1, col + 1, ("the file holds another document after '---'; keep one document per "
                                   "file (remove the second '---' and what follows, or merge them)")
    return line + 1, col + 1, f"{problem}; fix the syntax there"
