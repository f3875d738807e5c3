"""Where synthgen keeps things: the built-in prompt library and the cache folder."""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    """`$SYNTHGEN_CACHE`, default `~/.cache/synthgen` (models, embeddings, token counts)."""
    return Path(os.environ.get("SYNTHGEN_CACHE") or Path.home() / ".cache" / "synthgen").expanduser()


@functools.cache
def builtin_root(kind: str) -> Path:
    """Folder of the built-in `kind` library: the repo root in a checkout, package data in a wheel."""
    repo = Path(__file__).resolve().parents[2] / kind
    if repo.is_dir():
        return repo
    spec = importlib.util.find_spec(f"synthgen_library.{kind}")
    if spec and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return repo
