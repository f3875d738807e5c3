"""The manifest's `provenance`: where a run's data came from and under which licences.

    synthgen    version, and the git commit (and whether the tree had edits) when run from a
                checkout; the commit an installed package was built from is recorded only when
                pip kept it (direct_url.json), else said to be unknown
    models      per model: backend, weights (files and content hashes), revision, licence
    seed_data   per `seeds:` source: files and hashes, rows drawn, licence (the spec's `license:`
                or what the folder states)
    libraries   topic trees and persona sets: file, hash, built-in or the project's, licence

Gathered at every run start; every hash is cached by (path, size, mtime) and bounded
(`core.filehash`), and nothing here can stop a run: a fact that cannot be read is recorded as
unknown with a warning in the log.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import logging
import subprocess
from pathlib import Path

from generator.config.spec import SeedTopics, Spec, TreeTopics
from generator.core import licenses
from generator.core.filehash import Hasher
from generator.core.model_aliases import EMBEDDED, gguf_path, is_alias
from generator.core.paths import builtin_root
from generator.core.redact import scrub_url
from generator.core.version import __version__
from generator.library.catalog import resolve

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MAX_FILES_LISTED = 64  # a seed folder of thousands of shards: the first ones, and one digest of all
GIT_TIMEOUT_S = 5


@functools.cache
def synthgen_source() -> dict:
    """synthgen's version and, where it can be known, the commit it ran from."""
    out: dict = {"version": __version__, "commit": None}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
            out.update(commit=head, dirty=bool(dirty), source="checkout")
            return out
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("synthgen checkout %s: git could not name the commit (%s); recorded as unknown", root, exc)
    try:
        raw = md.distribution("synthgen").read_text("direct_url.json")
        commit = (json.loads(raw).get("vcs_info") or {}).get("commit_id") if raw else None
    except (md.PackageNotFoundError, ValueError):
        commit = None
    if commit:
        out.update(commit=commit, source="installed from a git checkout")
    else:
        out["source"] = "installed package"
        out["note"] = "the commit this installed package was built from is not known"
    return out


def _weights(files: list[Path], hasher: Hasher) -> list[dict]:
    return [{"file": f.name, **hasher.hash(f)} for f in files]


def _hf_cached_folder(name: str) -> Path | None:
    """The local snapshot of a Hub model id, if it is in the Hugging Face cache (never downloads)."""
    if "/" not in name or name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # third-party and optional: without it a hub id is recorded by name only
        return None
    try:
        hit = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def model_provenance(m, hasher: Hasher) -> dict:
    """One `models:` entry (a `config.models.ModelConfig`)."""
    out: dict = {"name": m.name, "backend": m.backend, "revision": None, "license": None}
    stated = licenses.normalise(m.license)
    if m.backend != "vllm":
        urls = m.base_url if isinstance(m.base_url, list) else [m.base_url] if m.base_url else []
        out.update(served_by=[scrub_url(u) for u in urls],
                   note="a served model: its weights and revision are not visible to synthgen")
    elif is_alias(m.name):
        info = EMBEDDED[m.name]
        gguf = gguf_path(m.name)
        try:
            version = md.version(info["package"].replace("_", "-"))
        except md.PackageNotFoundError:
            version = None
        out.update(source=info.get("source"), revision=f"{info['package']} {version}" if version else None,
                   weights=_weights([gguf], hasher), license=info.get("license"), license_from="synthgen's model list")
    else:
        path = Path(m.name).expanduser()
        folder = path if path.is_dir() else path.parent if path.is_file() else _hf_cached_folder(m.name)
        if folder is not None:
            files = [path] if path.is_file() else sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
            out["weights"] = _weights(files, hasher)
            if folder.parent.name == "snapshots":  # a Hugging Face cache snapshot: its name is the commit
                out["revision"] = folder.name
            stated_by = licenses.folder_license(folder)
            if stated_by:
                out.update(license=stated_by["license"], license_from=stated_by["from"])
        else:
            out["note"] = "not a local folder or file and not in the Hugging Face cache: weights not hashed"
    if stated:
        out.update(license=stated, license_from="the spec")
    return out


def _seed_path(spec: Spec, src: SeedTopics) -> Path:
    path = Path(src.seeds)
    return spec.base_dir / path if not path.is_absolute() and spec.base_dir is not None else path


def _stated_beside(path: Path) -> dict | None:
    """A licence stated in the data's folder: beside a file, or in (then above) a folder; a
    `datasets` folder's dataset_info.json counts too."""
    places = [path.parent] if path.is_file() else [path, path.parent]
    for folder in places:
        info = folder / "dataset_info.json"
        if info.is_file():
            try:
                lid = licenses.normalise(json.loads(info.read_text()).get("license"))
            except (OSError, ValueError, AttributeError):
                lid = None
            if lid:
                return {"license": lid, "from": str(info)}
        found = licenses.folder_license(folder)
        if found:
            return found
    return None


def seed_provenance(spec: Spec, src: SeedTopics, hasher: Hasher) -> dict:
    from generator.core.tabular import data_files as source_files

    path = _seed_path(spec, src)
    files = source_files(path)
    hashed = [{"file": str(f.relative_to(path)) if f != path else f.name, **hasher.hash(f)}
              for f in files[:MAX_FILES_LISTED]]
    out: dict = {"source": src.seeds, "path": str(path), "files": hashed, "n_files": len(files),
                 "sample": src.sample, "license": None}
    if len(files) > MAX_FILES_LISTED:
        out["files_listed"] = MAX_FILES_LISTED
    stated = _stated_beside(path)
    if stated:
        out.update(license=stated["license"], license_from=stated["from"])
    if src.license:
        out.update(license=licenses.normalise(src.license), license_from="the spec")
    return out


def library_provenance(kind: str, ref: str, spec: Spec, hasher: Hasher) -> dict:
    """A topic tree or persona set: built-in files are synthgen's (its licence); a project's own
    file is the user's, with a licence only where its folder states one."""
    path = resolve(kind, ref, spec.base_dir)
    out: dict = {"kind": kind, "ref": ref, "path": str(path), **hasher.hash(path)}
    builtin = builtin_root(kind).resolve()
    if path.is_relative_to(builtin):
        out.update(origin=f"synthgen {__version__} built-in library", license=_synthgen_license(),
                   license_from="synthgen's package")
        about = builtin / "README.md"
        if about.is_file():
            out["about"] = str(about)
    else:
        out["origin"] = "project file"
        stated = licenses.folder_license(path.parent)
        if stated and stated["license"]:
            out.update(license=stated["license"], license_from=stated["from"])
    return out


@functools.cache
def _synthgen_license() -> str:
    try:
        meta = md.metadata("synthgen")
        return licenses.normalise(meta.get("License-Expression") or meta.get("License")) or "apache-2.0"
    except md.PackageNotFoundError:  # a checkout without an install: pyproject.toml says Apache-2.0
        return "apache-2.0"


def gather(spec: Spec) -> dict:
    """The manifest's `provenance` section for `spec`."""
    hasher = Hasher()
    out: dict = {"synthgen": synthgen_source(), "models": [], "seed_data": [], "libraries": []}

    def attempt(section: str, what: str, fn) -> None:
        try:
            out[section].append(fn())
        except Exception as exc:  # noqa: BLE001 - provenance records a run, it is never a reason to stop one
            log.warning("provenance of %s not recorded: %s", what, exc)
            out[section].append({"ref": what, "error": str(exc)})

    try:
        for m in spec.models:
            attempt("models", m.name, lambda m=m: model_provenance(m, hasher))
        for src in spec.topics:
            if isinstance(src, SeedTopics) and not isinstance(src.seeds, str):
                from generator.library import reasoning_gym

                attempt("seed_data", src.label, lambda src=src: reasoning_gym.provenance(src, spec.seed))
            elif isinstance(src, SeedTopics):
                attempt("seed_data", src.seeds, lambda src=src: seed_provenance(spec, src, hasher))
            elif isinstance(src, TreeTopics):
                attempt("libraries", src.tree, lambda src=src: library_provenance("topics", src.tree, spec, hasher))
        if spec.personas is not None:
            attempt("libraries", spec.personas.file,
                    lambda: library_provenance("personas", spec.personas.file, spec, hasher))
    finally:
        hasher.close()
    return out
