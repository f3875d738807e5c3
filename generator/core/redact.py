"""Keeping secrets out of everything synthgen writes: manifests, logs, error lines.

Credentials travel in URLs (`https://user:token@host/v1`, `?api_key=...`) and, by mistake, in
settings meant for a variable's name (`api_key_env: sk-...`). URLs are scrubbed wherever they are
written; a setting that looks like a key is refused without echoing it.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query parameters whose value is a credential.
SECRET_PARAM = re.compile(r"(key|token|secret|password|passwd|pwd|auth|signature|sig|credential|session)",
                          re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
KEY_PREFIXES = ("sk-", "sk_", "pk-", "hf_", "ghp_", "gho_", "ghs_", "github_pat_", "xox", "AKIA", "ASIA",
                "AIza", "eyJ", "glpat-", "nvapi-", "gsk_", "r8_")


def scrub_url(url: str) -> str:
    """`url` without user:password and with credential-like query values replaced."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, REDACTED if SECRET_PARAM.search(k) else v) for k, v in pairs], safe=REDACTED)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"//[^/@\s]*@", f"//{REDACTED}@", url)


def scrub_text(text: str) -> str:
    """Every URL inside `text` scrubbed (for log and error lines)."""
    return _URL.sub(lambda m: scrub_url(m.group()), text)


_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(p) for p in KEY_PREFIXES)
                    + r")[A-Za-z0-9_\-.]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9_\-.=+/]{8,}")
_ASSIGNED = re.compile(r"(?i)\b([A-Za-z_]*(?:api[_-]?key|token|secret|password|passwd)[A-Za-z_]*)(\s*[=:]\s*)"
                       r"(['\"]?)[^\s'\",;]{6,}")


def scrub_secrets(text: str) -> str:
    """`scrub_text` plus what looks like a credential outside a URL (for log lines): key-shaped
    tokens (`sk-...`, `hf_...`), `Bearer ...` values and `api_key=...` assignments."""
    text = scrub_text(text)
    text = _TOKEN.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _ASSIGNED.sub(lambda m: m.group(0) if m.group(1).lower().endswith("_env")  # a variable's name
                         else f"{m.group(1)}{m.group(2)}{m.group(3)}{REDACTED}", text)


def scrub(value: Any) -> Any:
    """A JSON-like value with every string scrubbed (for manifests)."""
    if isinstance(value, str):
        return scrub_text(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def looks_like_key(value: str) -> bool:
    """A value pasted where an environment variable's *name* belongs."""
    if value.startswith(KEY_PREFIXES):
        return True
    if not ENV_NAME.match(value):
        return True
    # a long mixed-case-and-digit run without separators is a token, not a name
    return len(value) >= 24 and "_" not in value and any(c.isdigit() for c in value) \
        and any(c.islower() for c in value) and any(c.isupper() for c in value)
