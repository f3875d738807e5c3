"""Errors a user can act on: each renders as one line naming the file, the position and the fix."""
from __future__ import annotations

from pathlib import Path


class SynthgenError(Exception):
    """Base class for errors shown to users without a traceback."""


class SpecError(SynthgenError):
    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None,
                 col: int | None = None):
        self.message = message
        self.file = Path(file) if file is not None else None
        self.line = line
        self.col = col
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        return f"{where}{self.message}"


class TemplateError(SpecError):
    """A prompt template that cannot render: syntax, unknown variable, bad front matter."""


class ModelError(SynthgenError):
    """A model that cannot be resolved or loaded."""


class BackendError(SynthgenError):
    """A backend that failed in a way retries cannot fix (bad request, unreachable server)."""


class RunFolderError(SynthgenError):
    """A run folder that cannot be resumed into (the plan changed) or written (disk full)."""


class LockLostError(RunFolderError):
    """This run's lock on its run folder was taken over by another run: it must not write again."""


# the optional packages synthgen imports when a feature needs them, by import name -> their extra
EXTRAS = {"datasketch": "scoring", "sklearn": "scoring", "scipy": "scoring", "matplotlib": "scoring",
          "sentence_transformers": "scoring", "ray": "ray", "huggingface_hub": "hub", "fsspec": "cloud",
          "s3fs": "cloud", "mcp": "tools", "datasets": "probe", "accelerate": "probe", "transformers": "probe",
          "reasoning_gym": "reasoning"}


class MissingExtra(SynthgenError):
    """An optional feature whose third-party package is not installed: one line naming the extra."""

    def __init__(self, what: str, extra: str, module: str | None):
        self.extra, self.module = extra, module
        super().__init__(f"{what} needs the '{module}' package, part of synthgen's `{extra}` extra; install it "
                         f"with pip install 'synthgen[{extra}]' and rerun")


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """`exc` as the one line naming its extra, or None when it is not one of the optional packages
    (our own code missing is a bug, shown as it is)."""
    top = (exc.name or "").split(".")[0]
    return MissingExtra(what, EXTRAS[top], top) if top in EXTRAS else None
