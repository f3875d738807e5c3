"""Reading user text files (specs, templates, topic trees, persona sets) with one-line errors.

Every file a spec pulls in is read here: a size limit (a hostile file cannot exhaust memory),
UTF-8 only (a byte that is not UTF-8 is reported by line and column), and no control bytes
(NUL, escape sequences and the like are never part of a prompt; they are reported where they are).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from generator.core.errors import SpecError

# Limits (docs/security.md). The environment variable raises one for a legitimate large library.
MAX_TEXT_BYTES = int(os.environ.get("SYNTHGEN_MAX_FILE_BYTES") or 16 * 1024 * 1024)

# C0 controls except tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def has_control(value) -> bool:
    """A parsed value (string, list, mapping) holding a control character (e.g. from a YAML
    "\\e" or JSON "\\u001b" escape): refused like a raw one, so no terminal escape reaches output."""
    if isinstance(value, str):
        return _CONTROL.search(value) is not None
    if isinstance(value, dict):
        return any(has_control(k) or has_control(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_control(v) for v in value)
    return False


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character `index` in `text`."""
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def check_text(text: str, file: str | Path) -> str:
    """Refuse control characters in `text` (already decoded), naming where the first one is."""
    m = _CONTROL.search(text)
    if m:
        line, col = position(text, m.start())
        raise SpecError(f"control character U+{ord(m.group()):04X} in the file; remove it (only tab and "
                        f"newline are allowed)", file=file, line=line, col=col)
    return text


def decode(data: bytes, file: str | Path) -> str:
    """UTF-8 text of `data` (a BOM is dropped), or a one-line error naming the first bad byte."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError("the file is UTF-16; save it as UTF-8", file=file, line=1, col=1)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start]
        line = head.count(b"\n") + 1
        col = len(head) - (head.rfind(b"\n") + 1) + 1
        raise SpecError(f"byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8",
                        file=file, line=line, col=col) from None
    return check_text(text, file)


def read_text(file: str | Path, what: str = "file", limit: int | None = None) -> str:
    """Read a user file as checked UTF-8 text, refusing files over the size limit."""
    file = Path(file)
    limit = MAX_TEXT_BYTES if limit is None else limit
    try:
        if file.is_dir():
            raise SpecError(f"{what} is a folder, not a file; name a file", file=file)
        with open(file, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise SpecError(f"{what} not found; check the path", file=file) from None
    except PermissionError:
        raise SpecError(f"{what} cannot be read (permission denied); fix its permissions", file=file) from None
    except OSError as exc:
        raise SpecError(f"{what} cannot be read ({exc.strerror or exc}); check the path", file=file) from None
    if len(data) > limit:
        knob = "SYNTHGEN_MAX_YAML_BYTES" if what == "YAML file" else "SYNTHGEN_MAX_FILE_BYTES"
        raise SpecError(f"{what} is larger than the limit of {limit / (1024 * 1024):g} MiB; split it "
                        f"or raise {knob}", file=file)
    return decode(data, file)
