"""`--push-to-hub REPO`: upload an exported folder as a Hub dataset with `huggingface_hub`.

The token comes only from where `huggingface_hub` finds it (the HF_TOKEN environment variable,
or a stored `hf auth login`); it is never printed. Every failure is one line (exit code 2)."""
from __future__ import annotations

import os
from pathlib import Path

from generator.export.rows import ExportError


def _scrub(text: str) -> str:
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return " ".join(text.split())[:300]


def push_to_hub(folder: str | Path, repo: str, private: bool = False) -> str:
    """Create the dataset repo (if needed) and upload `folder`; returns the commit URL."""
    try:
        from huggingface_hub import HfApi, constants
    except ImportError:
        raise ExportError("--push-to-hub needs the huggingface_hub package; install it with "
                          "`pip install huggingface_hub` and rerun") from None
    endpoint = constants.ENDPOINT
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset",
                                 commit_message="Upload dataset exported by synthgen")
    except Exception as exc:  # network, auth and Hub errors all end here, as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {401: "log in with `hf auth login` or set HF_TOKEN",
                403: "the token cannot write to this repo; use a write token or your own namespace"}.get(
            status, "check the network (or HF_ENDPOINT) and the repo id, then rerun")
        raise ExportError(f"--push-to-hub {repo}: upload to {endpoint} failed ({type(exc).__name__}: "
                          f"{_scrub(first)}); {hint}. The exported folder {folder} is complete") from None
    return str(getattr(info, "commit_url", None) or info)
