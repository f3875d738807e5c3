"""Option helpers shared by the command modules."""
from __future__ import annotations

import logging
import os
import sys

import click

from generator.core import storage
from generator.core.errors import SynthgenError
from generator.core.logs import PACKAGES, ScrubbingFormatter

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_level = logging.WARNING  # this invocation's --log-level: synthgen's lines on stderr, and vLLM's own logs


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    """`--set KEY=VALUE` options as a dict of spec overrides."""
    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise click.UsageError(f"--set '{v}' is not KEY=VALUE; write e.g. --set seed=7")
        k, _, val = v.partition("=")
        out[k.strip()] = val
    return out


class _Stderr(logging.Handler):
    """Log lines on stderr, `warning: ...` as the commands always printed them. The stream is
    looked up at each line and written as text: rich's live display swaps sys.stderr for a proxy
    that prints above its bar (click.echo would reach past it to the raw buffer and write into
    the bar), and a test runner swaps it for a buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a broken stream must not stop the program
            self.handleError(record)


class _CliFormatter(ScrubbingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        label = getattr(record, "label", None) or record.levelname.lower()
        text = record.getMessage()
        if record.levelno <= logging.DEBUG:
            text = f"{record.name}: {text}"
        if record.exc_info and _level <= logging.DEBUG:  # a traceback only when debugging
            text += "\n" + self.formatException(record.exc_info)
        return super().format(logging.makeLogRecord({**record.__dict__, "msg": f"{label}: {text}", "args": None,
                                                     "exc_info": None, "exc_text": None}))


def configure_logging(level: str) -> None:
    """Logs on stderr from `level` up for synthgen (`--log-level`, `-v`); other libraries show
    their warnings (and their info lines at debug). Replaces an earlier call's setting."""
    global _level
    _level = LOG_LEVELS[level.lower()]
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(h)
    handler = _Stderr(_level)
    handler.setFormatter(_CliFormatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if _level <= logging.DEBUG else logging.WARNING)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(_level)


def reset_logging() -> None:
    """Undo `configure_logging` (the end of an invocation: tests run many in one process)."""
    global _level
    _level = logging.WARNING
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(logging.NOTSET)


def log_level() -> int:
    return _level


def quiet_engine_logs(verbose: bool = False) -> None:
    """vLLM's and transformers' own logs (their own handlers) stay off the terminal unless the
    level is info or debug (`-v`, `--log-level`) or `run --verbose` asks for them."""
    if verbose or _level <= logging.INFO:
        if _level <= logging.DEBUG:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG")
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")


class RunPath(click.Path):
    """A run folder argument: a local path, checked exactly as `click.Path` checks it (same
    messages), or an fsspec URL (`s3://bucket/runs/NAME`), passed on as the URL string once a run
    folder is found there. A URL holding none (or a storage error: no bucket, no credentials) is
    one line naming it, exit 2. `shards`: the command reads generations/, so a URL needs at least
    one shard; otherwise it needs the run's manifest.json."""

    def __init__(self, *, shards: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.shards = shards

    def convert(self, value, param, ctx):
        if not storage.is_url(value):
            return super().convert(value, param, ctx)
        from generator.core.run_layout import require_generation_files, require_run_folder

        try:
            (require_generation_files if self.shards else require_run_folder)(value)
        except SynthgenError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)
