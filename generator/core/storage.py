"""Where run folders live: a local path, or any fsspec URL (`s3://bucket/prefix`, `gs://...`).

A location is a `Path` (or a plain path string) for local folders, or a URL string: URLs are never
wrapped in `Path` (it would fold `s3://` into `s3:/`). Every function here takes either.

Writes are atomic for readers: a local file is written beside its target and renamed; on an
object store (S3, GCS, Azure) one PUT is atomic, the object appears whole or not at all, so a
file is uploaded under its final name; on other fsspec filesystems it is uploaded under a
temporary name and moved. Credentials come from the filesystem's own chain (for S3: the AWS_*
variables, `AWS_ENDPOINT_URL` for an S3-compatible server, `~/.aws`), never from synthgen's files.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from generator.core.errors import RunFolderError

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}  # a PUT lands whole or not at all
_EXTRA = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def is_url(loc: Any) -> bool:
    s = str(loc) if not isinstance(loc, Path) else ""
    return "://" in s and not s.startswith("file://")


def local_path(loc: Any) -> Path:
    s = str(loc)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def join(loc: Any, *parts: str) -> Any:
    """`loc/part/...`: a Path for a local folder, a URL string for a remote one."""
    if not is_url(loc):
        return local_path(loc).joinpath(*parts)
    return "/".join([str(loc).rstrip("/"), *(p.strip("/") for p in parts)])


def name_of(loc: Any) -> str:
    return str(loc).rstrip("/").rsplit("/", 1)[-1] if is_url(loc) else local_path(loc).name


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a missing driver is a one-line error."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RunFolderError(f"{url}: run folders on URLs need fsspec; pip install 'synthgen[cloud]'") from None
    protocol = url.split("://", 1)[0]
    try:
        return url_to_fs(url)
    except ImportError:
        pkg = _EXTRA.get(protocol, f"the fsspec driver for {protocol}://")
        raise RunFolderError(f"{url}: {protocol}:// needs {pkg}; install it (pip install 'synthgen[cloud]' "
                             f"brings s3fs)") from None
    except ValueError as exc:
        raise RunFolderError(f"{url}: {exc}; give a local folder or an fsspec URL such as s3://bucket/prefix") from None


def _why(exc: BaseException) -> str | None:
    """A one-line cause and fix for a storage error, or None when it is not one we know."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") or "credentials" in text.lower():
        return (f"no credentials ({text}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                f"and AWS_ENDPOINT_URL for an S3-compatible server")
    if isinstance(exc, FileNotFoundError) and "bucket does not exist" in text.lower():  # not a missing file
        return f"{text}; create the bucket first, or fix the URL"
    if isinstance(exc, PermissionError):
        return f"access denied ({text}); check the credentials' rights on this bucket"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
            isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH)):
        return f"cannot reach the storage endpoint ({text}); check AWS_ENDPOINT_URL and the network"
    return None


@contextlib.contextmanager
def errors(loc: Any) -> Iterator[None]:
    """Storage errors a user can fix (missing bucket, no credentials, endpoint down) as one line."""
    try:
        yield
    except RunFolderError:
        raise
    except Exception as exc:
        why = _why(exc) if is_url(loc) else None
        if why is None:
            raise
        raise RunFolderError(f"{loc}: {why}") from None


def exists(loc: Any) -> bool:
    if not is_url(loc):
        return local_path(loc).exists()
    with errors(loc):
        fs, path = filesystem(str(loc))
        fs.invalidate_cache(path)
        return fs.exists(path)


def is_dir(loc: Any) -> bool:
    """A local directory; on an object store, a prefix holding at least one object."""
    if not is_url(loc):
        return local_path(loc).is_dir()
    with errors(loc):
        fs, path = filesystem(str(loc))
        fs.invalidate_cache(path)
        return bool(fs.exists(path)) and fs.isdir(path)


def check_writable(loc: Any) -> None:
    """Create a local folder; for a URL, check that its bucket exists (a clear error before any work)."""
    if not is_url(loc):
        local_path(loc).mkdir(parents=True, exist_ok=True)
        return
    with errors(loc):
        fs, path = filesystem(str(loc))
        root = path.split("/", 1)[0]
        if _atomic_puts(fs) and not fs.exists(root):
            fs.ls(root, detail=False)  # `exists` hides why (no credentials, no bucket): this raises it
            raise RunFolderError(f"{loc}: bucket {root} does not exist or cannot be read; create it first, "
                                 f"or fix the URL")


def glob(loc: Any, pattern: str) -> list[Any]:
    """The files directly in folder `loc` matching `pattern`, sorted by name (never cached listings:
    other machines write into the same folder)."""
    if not is_url(loc):
        return sorted(local_path(loc).glob(pattern))
    with errors(loc):
        fs, path = filesystem(str(loc))
        fs.invalidate_cache(path)
        base = str(loc).rstrip("/")
        return sorted(f"{base}/{p.rsplit('/', 1)[-1]}" for p in fs.glob(f"{path.rstrip('/')}/{pattern}"))


def read_bytes(loc: Any) -> bytes:
    """A file's bytes; FileNotFoundError when it is not there."""
    if not is_url(loc):
        return local_path(loc).read_bytes()
    with errors(loc):
        fs, path = filesystem(str(loc))
        return fs.cat_file(path)


@contextlib.contextmanager
def open_read(loc: Any) -> Iterator[Any]:
    """A seekable binary file object (Parquet readers read only the parts they need)."""
    if not is_url(loc):
        with open(local_path(loc), "rb") as fh:
            yield fh
        return
    with errors(loc):
        fs, path = filesystem(str(loc))
        with fs.open(path, "rb") as fh:
            yield fh


def download(loc: Any, dest: Path) -> None:
    """Copy a file to the local path `dest` (streamed, not held in memory; whole or not at all)."""
    from generator.core.files import atomic_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if not is_url(loc):
            import shutil

            shutil.copyfile(local_path(loc), tmp)
            return
        with errors(loc):
            fs, path = filesystem(str(loc))
            fs.get_file(path, str(tmp))


def upload_tree(folder: Path, loc: Any, last: str | None = None) -> list[Any]:
    """Upload every file under the local `folder` to the same relative names under `loc`, each one
    atomically, the file named `last` (relative) after all the others: a reader that sees it sees
    the whole tree. Returns the locations written."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rel = [p.relative_to(folder).as_posix() for p in files]
    order = sorted(range(len(files)), key=lambda i: rel[i] == last)  # stable: `last` moves to the end
    written = []
    for i in order:
        target = join(loc, *rel[i].split("/"))
        if is_url(target):
            with errors(target):
                _put_file(files[i], target)
        else:
            import shutil

            write_atomic(target, lambda tmp, s=files[i]: shutil.copyfile(s, tmp))
        written.append(target)
    return written


def remove(loc: Any) -> None:
    if not is_url(loc):
        local_path(loc).unlink(missing_ok=True)
        return
    with errors(loc):
        fs, path = filesystem(str(loc))
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)


def remove_tree(loc: Any) -> None:
    if not is_url(loc):
        import shutil

        shutil.rmtree(local_path(loc), ignore_errors=True)
        return
    with errors(loc):
        fs, path = filesystem(str(loc))
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)


def write_atomic(loc: Any, fill: Callable[[Path], None], before: Callable[[], None] | None = None) -> None:
    """Write a file through `fill(local_tmp_path)`; readers see the old file or the whole new one.
    `before()` runs after `fill`, immediately before the file becomes visible (the rename or the
    PUT); when it raises, nothing is written (a run's lock fence, see `engine.run_lock`)."""
    if not is_url(loc):
        from generator.core.files import atomic_path

        with atomic_path(local_path(loc)) as tmp:
            fill(tmp)
            if before is not None:
                before()
        return
    with errors(loc):
        fd, tmp = tempfile.mkstemp(prefix=".synthgen-upload-", suffix=".tmp")
        os.close(fd)
        try:
            fill(Path(tmp))
            if before is not None:
                before()
            _put_file(Path(tmp), loc)
        finally:
            os.unlink(tmp)


def _atomic_puts(fs: Any) -> bool:
    """Whether a PUT to `fs` lands whole or not at all (an object store)."""
    return bool(set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) & OBJECT_STORES)


def _put_file(src: Path, loc: Any) -> None:
    """Upload the local file `src` to the URL `loc`; readers see the old object or the whole new one."""
    fs, path = filesystem(str(loc))
    if _atomic_puts(fs):
        fs.put_file(str(src), path)
    else:  # no atomic PUT: upload beside the target, then move it into place
        part = f"{path}.{os.getpid()}.tmp"
        fs.put_file(str(src), part)
        fs.mv(part, path)
    fs.invalidate_cache(path)


def write_bytes_atomic(loc: Any, data: bytes) -> None:
    write_atomic(loc, lambda tmp: tmp.write_bytes(data))


def create_exclusive(loc: Any, data: bytes) -> bool:
    """Write `loc` only if no such file exists (one atomic step); False when one already does."""
    if not is_url(loc):
        path = local_path(loc)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    with errors(loc):
        fs, path = filesystem(str(loc))
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a filesystem without exclusive writes
            raise RunFolderError(f"{loc}: this filesystem ({fs.protocol}) cannot create a file only if it is "
                                 f"absent, so the run folder cannot be locked; use s3:// or a local folder") from None
        fs.invalidate_cache(path)
        return True
