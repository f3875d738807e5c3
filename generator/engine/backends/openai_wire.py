"""The OpenAI chat-completions wire format: what goes on the wire (the request body, the
Authorization header) and what comes back (a choice as a Result, the server's error message, its
`Retry-After`, which statuses are worth retrying). Shared by the HTTP backend (`openai_http`) and
the batch API (`openai_batch`, `batch_api`); no sending, no state.
"""
from __future__ import annotations

import email.utils
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from generator.core.errors import BackendError
from generator.core.backend import Request, Result
from generator.core.reasoning import Markers, share, split

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def redacted_url(url: str) -> str:
    """The URL without user:password or query string (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def server_message(body: bytes | str, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
        text = msg if isinstance(msg, str) else json.dumps(msg)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def auth_headers(api_key_env: str | None, who: str) -> dict[str, str]:
    """The Authorization header from the key in `api_key_env` (read here, never stored elsewhere)."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise BackendError(f"{who}: environment variable {api_key_env} is not set; export it with the "
                           f"endpoint's API key")
    return {"Authorization": f"Bearer {key}"}


def request_body(model: str, r: Request, send_seed: bool = True) -> dict[str, Any]:
    """The chat-completions body of one request (the HTTP backend's, and each line of a batch file)."""
    s = r.sampling
    body: dict[str, Any] = {"model": model, "messages": list(r.messages), "temperature": s.temperature,
                            "top_p": s.top_p, "max_tokens": s.max_tokens}
    if s.repetition_penalty is not None:  # a vLLM server extension; others ignore or refuse it
        body["repetition_penalty"] = s.repetition_penalty
    if r.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "record", "schema": r.json_schema, "strict": True}}
    if r.tools is not None:  # native tool calling: the server's template renders them, its parser reads calls
        body["tools"] = list(r.tools)
        body["tool_choice"] = "auto"
    if send_seed and s.seed is not None:
        body["seed"] = s.seed
    return body


def choice_result(rid: str, choice: dict, usage: dict, markers: Markers | None = None) -> Result:
    """One chat-completions answer as a Result; the message's `tool_calls` (a server with a tool
    parser) go to `meta["tool_calls"]` in OpenAI form. A reasoning model's thinking is read from
    `reasoning_content` (vLLM's reasoning parsers) or `reasoning`; where the server sent neither,
    a request with `markers` has its content split by them. Reasoning tokens are the server's
    count (`completion_tokens_details.reasoning_tokens`), else estimated by characters."""
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    meta: dict = {"tool_calls": [{"id": c.get("id"), "type": "function", "function": dict(c["function"])}
                                 for c in calls]} if calls else {}
    text = message.get("content") or choice.get("text") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or None
    if reasoning is None and markers is not None:
        part = split(text, markers)
        reasoning, text = part.reasoning, part.text
        if not part.ended:
            meta["reasoning_unfinished"] = True
    elif reasoning is not None and not text.strip() and not calls:  # the server's parser found no answer
        meta["reasoning_unfinished"] = True
    completion = int(usage.get("completion_tokens") or 0)
    counted = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return Result(id=rid, text=text, finish_reason=choice.get("finish_reason") or "stop",
                  prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=completion, meta=meta,
                  reasoning=reasoning,
                  reasoning_tokens=int(counted) if counted is not None else share(completion, reasoning, text))
