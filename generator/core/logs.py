"""Logging shared by every layer, and the run's own log file.

Every module that can fail or has something worth knowing logs through
`logging.getLogger(__name__)`; nothing here prints. Two places attach handlers:

- the command line (`generator.cli.options.configure_logging`): one stderr handler whose level
  `--log-level` / `-v` set (warnings by default, so the terminal shows what it always showed);
- every run (`run_log`): the run folder's `run.log`, INFO and above with timestamps, appended
  across resumes. Its INFO lines (plan, start, shards, done, statuses) are written whatever the
  terminal's level is; the terminal (or the caller's own handlers) still gets only what it asked for.

Secrets never reach either: each line goes through `redact.scrub_secrets`.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from generator.core import storage
from generator.core.redact import scrub_secrets
from generator.core.run_layout import RUN_LOG

log = logging.getLogger(__name__)

PACKAGES = ("generator", "scoring")  # the loggers a run log reads at INFO
RUN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose lines (message, traceback) have credentials replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_secrets(super().format(record))


class RunLogHandler(logging.FileHandler):
    """Appends to one run's `run.log` (a local file; for a URL run folder, a local copy)."""


class _Forward(logging.Handler):
    """While a run log is open the packages' loggers stop propagating (their INFO lines are for
    the file): this hands the root's handlers what they got before, records at or above `floor`
    (the package's level before the run), or Python's last-resort stderr handler when the root
    has none, as without a run log."""

    def __init__(self, floor: int):
        super().__init__()
        self.floor = floor

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.floor or getattr(record, "run_log_only", False):
            return
        handlers = [h for h in logging.getLogger().handlers if not isinstance(h, RunLogHandler)]
        if not handlers:
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)
            return
        for h in handlers:
            if record.levelno >= h.level:
                h.handle(record)


_lock = threading.Lock()
_open: list[RunLogHandler] = []  # the run logs open in this process
_saved: dict[str, tuple[int, bool, _Forward]] = {}  # package -> (level, propagate, its forwarder) while any is


def _attach(handler: RunLogHandler) -> None:
    with _lock:
        if not _open:
            for name in PACKAGES:
                lg = logging.getLogger(name)
                floor = lg.getEffectiveLevel()
                fwd = _Forward(floor)
                _saved[name] = (lg.level, lg.propagate, fwd)
                lg.setLevel(min(floor, logging.INFO))
                lg.propagate = False
                lg.addHandler(fwd)
        handler.setLevel(min(logging.getLogger(PACKAGES[0]).level, logging.INFO))
        _open.append(handler)
        for name in PACKAGES:
            logging.getLogger(name).addHandler(handler)
        logging.getLogger().addHandler(handler)  # other libraries' warnings (their loggers propagate)


def _detach(handler: RunLogHandler) -> None:
    with _lock:
        for name in PACKAGES:
            logging.getLogger(name).removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        if handler in _open:
            _open.remove(handler)
        if not _open:
            for name, (level, propagate, fwd) in _saved.items():
                lg = logging.getLogger(name)
                lg.removeHandler(fwd)
                lg.setLevel(level)
                lg.propagate = propagate
            _saved.clear()


@contextmanager
def run_log(run_dir: Any, before: Callable[[], None] | None = None) -> Iterator[Path]:
    """Everything logged while the block runs, INFO and above, appended to `run_dir`/run.log.
    A run folder on a URL is logged into a local copy (its earlier lines downloaded first) and
    uploaded whole when the block ends, failing or not, after `before()` (the run's lock fence: a
    run that lost its folder keeps its log locally instead of overwriting the new holder's). Yields
    the local file."""
    loc = storage.join(run_dir, RUN_LOG)
    remote = storage.is_url(run_dir)
    if remote:
        fd, tmp = tempfile.mkstemp(prefix="synthgen-run-", suffix=".log")
        os.close(fd)
        path = Path(tmp)
        if storage.exists(loc):  # appended across resumes: read, then rewritten whole at the end
            path.write_bytes(storage.read_bytes(loc))
    else:
        path = storage.local_path(loc)
        path.parent.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(ScrubbingFormatter(RUN_LOG_FORMAT))
    _attach(handler)
    try:
        log.info("run log opened: pid %d on %s, folder %s", os.getpid(), socket.gethostname(), run_dir)
        yield path
    except BaseException as exc:
        # the error line itself reaches the terminal from the caller (the CLI's `error: ...`): here
        # it goes to the file only, so a failed run's log says how it ended
        log.error("run ended: %s: %s", type(exc).__name__, " ".join(str(exc).split()) or "(no message)",
                  extra={"run_log_only": True})
        raise
    finally:
        _detach(handler)
        handler.close()
        if remote:
            try:
                storage.write_atomic(loc, lambda t: shutil.copyfile(path, t), before=before)
            except Exception as exc:  # noqa: BLE001 - the run's own result (or its error) matters more
                # than its log: say so and go on; the local copy is kept for the user
                log.warning("could not upload the run log to %s (%s); it is kept at %s", loc, exc, path)
            else:
                path.unlink(missing_ok=True)
