"""The lock a run holds on its run folder, and the fence every write of the run passes.

Locally the lock is an OS file lock (`RUN/.lock`, `RUN/.lock.owner` names the holder): a live
process never loses it, so a second run is refused while the first lives, stopped or not. On an
object store it is a `.lock` object created only if absent (a conditional PUT) and rewritten every
`heartbeat_s()`; the next run takes it over once it is `stale_s()` old (at once when its process
is gone from this host). So a run on an object store can lose its lock: stalled past the stale
time (SIGSTOP, a paused VM, a bucket unreachable for minutes) while another run took it over.

The fence: the holder knows its token, and before every write that becomes visible in the folder
(published answers, a shard, the plan, the manifest, the dataset card and scores) `check(path)`
reads `.lock` and compares the token (locally it only looks at a flag: nothing can take the lock).
A foreign token, or none, raises `LockLostError`, one line naming the other holder, and the write
never happens. The heartbeat checks the same way each beat and marks the lock lost, so a run
waiting on its model stops too (`Fence.on_lost`). Answers already published stay: the run that
holds the folder replays them.

The window that remains: a check is one GET, and the write after it one PUT. A process paused
between the two for longer than the stale time (so that another run took the folder over meanwhile)
still lands that one write. Likewise a heartbeat paused between its read and its rewrite puts its
token back over a taker's; the taker's next check then sees a foreign token and stops, so there is
still one writer. Closing these needs compare-and-swap PUTs (If-Match), which not every store has.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from generator.core import storage
from generator.core.errors import LockLostError, RunFolderError
from generator.core.run_layout import read_manifest
from generator.core.storage import is_url, join

log = logging.getLogger(__name__)

__all__ = ["LOCK_HEARTBEAT_S", "LOCK_STALE_S", "Fence", "check", "follow", "heartbeat_s", "hold", "holder",
           "stale_s"]

LOCK_HEARTBEAT_S = 30.0  # a run on an object store rewrites its lock object this often (SYNTHGEN_LOCK_HEARTBEAT_S)
LOCK_STALE_S = 180.0  # and a lock object not rewritten for this long belongs to a dead run (SYNTHGEN_LOCK_STALE_S)
MANIFEST_KEY = "lock_holder"  # the manifest names the run that wrote it, for a run that lost the lock to it


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise RunFolderError(f"{name}={raw!r}: give a positive number of seconds, or unset it "
                             f"(default {default:g})")
    return value


def heartbeat_s() -> float:
    return _seconds("SYNTHGEN_LOCK_HEARTBEAT_S", LOCK_HEARTBEAT_S)


def stale_s() -> float:
    return _seconds("SYNTHGEN_LOCK_STALE_S", LOCK_STALE_S)


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))
    except (TypeError, ValueError):
        return "an unknown time"


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("pid", "host", "since"))


class Fence:
    """One run's claim on a run folder: `check()` before every visible write. `me` is the holder
    (pid, host, since, token); `where` its lock object (None for a local folder's file lock)."""

    def __init__(self, path: Any, me: dict, where: Any | None):
        self.path, self.me, self.where = path, me, where
        self.lost: LockLostError | None = None
        self.beat_at = time.time()  # the last heartbeat this run wrote (or took the lock)
        self._mu = threading.Lock()
        self._listeners: list[Callable[[LockLostError], None]] = []

    def check(self) -> None:
        """Raise `LockLostError` unless the lock is still this run's."""
        if self.lost is not None:
            raise self.lost
        if self.where is None:  # an OS file lock held by this live process: nobody can take it
            return
        who = _read(self.where)
        if who is None or who.get("token") != self.me["token"]:
            raise self.lose(who)

    def lose(self, who: dict | None) -> LockLostError:
        """Mark the lock lost to `who` (the lock object now there, None when there is none); every
        later check raises, and each `on_lost` listener is told once."""
        with self._mu:
            if self.lost is not None:
                return self.lost
            self.lost = LockLostError(self._message(who))
            listeners = list(self._listeners)
        log.info("%s", self.lost)  # raised to the caller, which shows it (one line on the command line)
        for fn in listeners:
            fn(self.lost)
        return self.lost

    def on_lost(self, fn: Callable[[LockLostError], None]) -> Callable[[], None]:
        """Call `fn(error)` once the lock is lost (at once if it already is); returns the unsubscribe."""
        with self._mu:
            lost = self.lost
            if lost is None:
                self._listeners.append(fn)
        if lost is not None:
            fn(lost)

        def off() -> None:
            with self._mu:
                if fn in self._listeners:
                    self._listeners.remove(fn)
        return off

    def _message(self, who: dict | None) -> str:
        quiet = time.time() - self.beat_at
        head = f"{self.path}: this run lost its lock on the run folder"
        tail = (f"; its last heartbeat was {quiet:.0f}s ago and a lock not refreshed for {stale_s():g}s may be "
                f"taken over (was this process paused?); it stopped without writing more, and what it published "
                f"is kept: the run holding the folder replays it")
        if who is not None:
            return (f"{head} to another run (pid {who.get('pid')} on host {who.get('host')}, holding it since "
                    f"{_when(who.get('since'))}){tail}")
        try:  # released since: the manifest names the run that wrote it last
            other = (read_manifest(self.path) or {}).get(MANIFEST_KEY) or {}
        except (OSError, ValueError, RunFolderError) as exc:
            log.warning("%s: could not read the manifest to name the run that took the lock: %s", self.path, exc)
            other = {}
        if other and not _same(other, self.me):
            return (f"{head} to another run (pid {other.get('pid')} on host {other.get('host')}, holding it "
                    f"since {_when(other.get('since'))}), which has finished since{tail}")
        return f"{head}: its lock object was removed by someone else{tail}"


def _read(where: Any) -> dict | None:
    """The lock object's content; None when there is none (an unreadable one counts as foreign)."""
    try:
        return json.loads(storage.read_bytes(where))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


_FENCES: dict[str, Fence] = {}  # run folder -> this process's fence on it


def _key(path: Any) -> str:
    return str(path) if is_url(path) else os.path.abspath(path)


def check(path: Any) -> None:
    """The fence of `path`, if this process holds (or follows) its lock: raises `LockLostError`
    once the lock is another run's. A folder this process holds no lock on is not checked."""
    fence = _FENCES.get(_key(path))
    if fence is not None:
        fence.check()


def fence_of(path: Any) -> Fence | None:
    return _FENCES.get(_key(path))


def holder(path: Any) -> dict | None:
    """The identity and token of the run holding `path` in this process (sent to Ray actors)."""
    fence = _FENCES.get(_key(path))
    return dict(fence.me) if fence is not None else None


def follow(path: Any, me: dict) -> Fence:
    """Check the writes of this process (a Ray actor) against the lock that `me` (the driver,
    see `holder`) holds on `path`."""
    fence = _FENCES.get(_key(path))
    if fence is None or fence.me.get("token") != me.get("token"):
        fence = _FENCES[_key(path)] = Fence(path, dict(me), join(path, ".lock") if is_url(path) else None)
    return fence


def _identity() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": os.urandom(8).hex()}


@contextmanager
def hold(path: Any, create: Callable[[], None]) -> Iterator[Fence]:
    """Hold the folder for one run (`create()` makes it first): a second run on it fails at once,
    naming the holder. Yields the run's fence."""
    inner = _object_lock(path, create) if is_url(path) else _file_lock(path, create)
    with inner as fence:
        _FENCES[_key(path)] = fence
        try:
            yield fence
        finally:
            if _FENCES.get(_key(path)) is fence:
                del _FENCES[_key(path)]


@contextmanager
def _file_lock(path: Any, create: Callable[[], None]) -> Iterator[Fence]:
    from filelock import FileLock, Timeout

    create()
    owner = path / ".lock.owner"
    lock = FileLock(str(path / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads(owner.read_text())
            held = f"pid {who.get('pid')} on host {who.get('host')}"
        except (OSError, ValueError):
            held = "another process"
        raise RunFolderError(f"{path} is in use by another run ({held}); wait for it to finish, "
                             f"or write this run elsewhere with --out NEW_DIR") from None
    me = _identity()
    try:
        owner.write_text(json.dumps({k: me[k] for k in ("pid", "host", "since")}))
        yield Fence(path, me, None)
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


@contextmanager
def _object_lock(path: Any, create: Callable[[], None]) -> Iterator[Fence]:
    """The lock of a folder on an object store: a `.lock` object created only if absent, rewritten
    every `heartbeat_s()` while the run lives. One left by a dead run is taken over: at once when
    its process is gone from this host, else once it is `stale_s()` old."""
    create()
    where = join(path, ".lock")
    me = _identity()
    stale, every = stale_s(), heartbeat_s()

    def body() -> bytes:
        return json.dumps({**me, "heartbeat": time.time()}).encode()

    if not storage.create_exclusive(where, body()):
        who = _read(where) or {}
        taken = False
        if _stale(who, stale):
            log.warning("%s: taking over the lock of a run that no longer refreshes it (pid %s on host %s, last "
                        "heartbeat at %s); if that run was only paused, it stops before its next write",
                        path, who.get("pid"), who.get("host"), _when(who.get("heartbeat")))
            storage.remove(where)
            taken = storage.create_exclusive(where, body())  # two takers: one wins
        if not taken:
            age = time.time() - float(who.get("heartbeat") or time.time())
            raise RunFolderError(
                f"{path} is in use by another run (pid {who.get('pid')} on host {who.get('host')}, last "
                f"seen {age:.0f}s ago); wait for it to finish, or write this run elsewhere with --out NEW_DIR "
                f"(a dead run's lock is taken over {stale:.0f}s after its last heartbeat)")
    fence = Fence(path, me, where)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            quiet = time.time() - fence.beat_at
            try:
                who = _read(where)
            except Exception as exc:  # noqa: BLE001 - any storage failure; logged, retried next beat, and a
                # lock lost meanwhile is caught by the check before the next write
                log.warning("%s: missed heartbeat, cannot read the lock (%s: %s); retrying in %gs",
                            where, type(exc).__name__, exc, every)
                continue
            if who is None or who.get("token") != me["token"]:
                fence.lose(who)  # taken over: never rewritten by us again
                return
            if quiet > stale:  # still ours, by luck: nobody wanted the folder meanwhile
                log.warning("%s: no heartbeat for %.0fs, longer than the %gs after which another run may take the "
                            "folder over (was this process paused?); the lock is still this run's", where, quiet, stale)
            try:
                storage.write_bytes_atomic(where, body())
                fence.beat_at = time.time()
            except Exception as exc:  # noqa: BLE001 - as above: logged, retried next beat
                log.warning("%s: missed heartbeat, cannot rewrite the lock (%s: %s); retrying in %gs",
                            where, type(exc).__name__, exc, every)

    thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield fence
    finally:
        stop.set()
        thread.join(timeout=5)
        if fence.lost is None and (_read(where) or {}).get("token") == me["token"]:
            storage.remove(where)  # a lost lock is the taker's: never removed by us


def _stale(who: dict, stale: float) -> bool:
    """A lock object whose run is gone: its process is not alive on this host, or no heartbeat for long."""
    if not who:
        return True
    if who.get("host") == socket.gethostname():
        try:
            os.kill(int(who.get("pid")), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError, ValueError):
            pass
    return time.time() - float(who.get("heartbeat") or 0) > stale
