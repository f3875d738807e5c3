"""Which files a spec may pull into prompts: its project, the built-in library, allowed folders.

A spec is code-like input that travels between people; its templates, topic trees, persona sets
and includes become prompts sent to model servers. So every such file must resolve (symlinks
followed) inside one of:

- the spec's project root: the spec's folder, or its parent when the spec lives in `specs/`
  (the layout `synthgen init` writes: specs/, templates/, topics/, personas/ side by side);
- the built-in library (templates/, topics/, personas/, specs/ shipped with synthgen);
- a folder allowed explicitly: `--allow-path DIR` on the command line or `allow_paths:` in the spec.

System folders are never allowed (SYSTEM_DIRS), nor, from a spec's `allow_paths:`, a folder that
contains the home folder or a hidden folder (`~/.ssh`, `~/.aws`): a spec copied from elsewhere
must not be able to open those. Data sources of `synthgen mix` and `score` are not confined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generator.core.errors import SpecError

SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/run", "/var", "/usr", "/bin",
               "/sbin", "/lib", "/lib64", "/snap")
LIBRARY_KINDS = ("templates", "topics", "personas", "specs")


def project_root(spec_file: str | Path) -> Path:
    """The spec's folder, or its parent when the spec lives in a folder named `specs`."""
    folder = Path(spec_file).absolute().parent
    return folder.parent if folder.name == "specs" else folder


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_allowed_dir(raw: str, base: Path, from_spec: bool) -> Path:
    """Resolve one allowed folder; raise ValueError (the caller adds file:line) when it is refused."""
    path = (base / Path(raw).expanduser()).resolve()
    if path == Path(path.anchor):
        raise ValueError(f"'{raw}' is the file system root; allow a project folder instead")
    for sysdir in SYSTEM_DIRS:
        sd = Path(sysdir)
        if _inside(path, sd) or _inside(sd, path):
            raise ValueError(f"'{raw}' is or contains the system folder {sysdir}; allow a project folder instead")
    if from_spec:
        home = Path.home().resolve()
        if _inside(home, path):
            raise ValueError(f"'{raw}' contains the home folder; name the one folder with the files")
        hidden = [p for p in path.parts if p.startswith(".") and p not in (".", "..")]
        if hidden:
            raise ValueError(f"'{raw}' is inside the hidden folder {hidden[0]}; move the files to a "
                             f"visible folder (or pass --allow-path on the command line)")
    return path


@dataclass(frozen=True)
class Confinement:
    """The folders files may come from; `check` refuses anything that resolves elsewhere."""

    project: Path
    builtin: tuple[Path, ...] = ()
    allowed: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.project.resolve(), *(b.resolve() for b in self.builtin), *self.allowed)

    def permits(self, path: Path) -> bool:
        real = path.resolve()
        return any(_inside(real, r) for r in self.roots)

    def check(self, path: Path, what: str, ref: str, file: Path | None = None, line: int | None = None,
              col: int | None = None) -> Path:
        """`path` resolved, or a SpecError naming the reference and the fix."""
        real = path.resolve()
        if any(_inside(real, r) for r in self.roots):
            return real
        raise SpecError(f"{what} '{ref}' resolves to {real}, outside the project {self.project} and the "
                        f"built-in library; copy it into the project, or allow its folder with "
                        f"--allow-path DIR or the spec's `allow_paths:`", file=file, line=line, col=col)
