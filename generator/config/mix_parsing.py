"""Token counts ('2M', '1.5B'), real:synthetic ratios ('4:1') and row templates ('{question}') as
written in mix configs."""
from __future__ import annotations

import re
import string
from fractions import Fraction
from typing import Any

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmbgt]?)$")
_SIZE_MULT = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


def parse_token_count(value: Any) -> int:
    """2000000, '2M', '2_000_000', '1.5B' -> int."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a token count; write e.g. 2000000 or '2M'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "").replace(",", "")
        m = _SIZE_RE.match(text)
        if m:
            return int(Fraction(m.group(1)) * _SIZE_MULT[m.group(2)])
        try:
            as_float = float(text)  # 2e6 (YAML 1.1 reads it as a string)
        except ValueError:
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
    raise ValueError(f"{value!r} is not a token count; write e.g. 2000000 or '2M'")


def parse_ratio(value: Any) -> tuple[Fraction, Fraction]:
    """'4:1' -> (4, 1) real:synthetic. Also undoes YAML 1.1's base-60 reading of 4:1 (= 241)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a ratio; write real:synthetic tokens in quotes, e.g. \"4:1\"")
    if isinstance(value, int):
        if value < 60:
            raise ValueError(f"ratio {value} is a number; write real:synthetic in quotes, e.g. \"4:1\"")
        value = f"{value // 60}:{value % 60}"  # YAML 1.1 read an unquoted a:b as a*60+b
    m = _RATIO_RE.match(str(value))
    if not m:
        raise ValueError(f"ratio {value!r} is not real:synthetic tokens; write it like \"4:1\"")
    r, s = Fraction(m.group(1)), Fraction(m.group(2))
    if r == 0 and s == 0:
        raise ValueError("ratio 0:0 selects nothing; give one side a share, e.g. \"1:0\"")
    return r, s


def _fmt_num(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else format(float(x), "g")


def ratio_text(value: Any) -> str:
    r, s = parse_ratio(value)
    return f"{_fmt_num(r)}:{_fmt_num(s)}"


def ratio_folder(value: Any) -> str:
    """'4:1' -> 'ratio-4_1'."""
    return "ratio-" + ratio_text(value).replace(":", "_")


def template_fields(template: str) -> list[str]:
    fields = []
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            if name == "" or not name.isidentifier():
                raise ValueError(f"template {template!r}: use named fields such as {{question}}")
            if name not in fields:
                fields.append(name)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return fields
