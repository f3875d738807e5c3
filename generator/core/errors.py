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
