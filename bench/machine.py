"""The machine a bench ran on, printed beside its numbers and stored in its JSON: a figure means
little without the CPU (AVX-512 or not), cores, memory and GPU it was measured on."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


def parse_cpuinfo(text: str) -> dict:
    """CPU model, logical CPU count and vector extensions from the text of /proc/cpuinfo."""
    model, flags, cpus = "", set(), 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            cpus += 1
        elif key in ("model name", "Model", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 calls them flags, ARM features
            flags = set(value.split())
    return {"cpu": model or platform.processor() or platform.machine(), "cpus": cpus,
            "avx512": "avx512f" in flags, "avx2": "avx2" in flags}


def parse_meminfo(text: str) -> int | None:
    """MemTotal of /proc/meminfo in bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def gpus() -> list[str]:
    """'NAME (N MiB)' per NVIDIA GPU nvidia-smi lists; [] without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_gpus(out)


def parse_gpus(text: str) -> list[str]:
    """'NAME (MEMORY)' per line of `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`."""
    return [f"{name.strip()} ({mem.strip()})" if mem.strip() else name.strip()
            for name, _, mem in (line.rpartition(",") for line in text.splitlines() if "," in line)]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def machine() -> dict:
    """The facts about this machine a bench records: cpu, avx512, avx2, cores, memory_gib, gpus."""
    info = parse_cpuinfo(_read("/proc/cpuinfo"))
    try:
        usable = len(os.sched_getaffinity(0))  # a container may see more CPUs than it may use
    except AttributeError:
        usable = os.cpu_count() or 0
    mem = parse_meminfo(_read("/proc/meminfo"))
    return {"cpu": info["cpu"], "avx512": info["avx512"], "avx2": info["avx2"],
            "cores": usable, "cpus": info["cpus"] or os.cpu_count() or 0,
            "memory_gib": round(mem / 2**30, 1) if mem else None, "gpus": gpus(),
            # torch told to use less than the CPU has (e.g. an AVX2-only CPU emulated on AVX-512)
            "isa_cap": os.environ.get("ATEN_CPU_CAPABILITY") or None}


def describe(info: dict | None = None) -> str:
    """One line for a bench's output, e.g. 'machine: AMD EPYC, AVX-512 no, AVX2 yes, 2 cores, 7.7 GiB, no GPU'."""
    m = info if info is not None else machine()
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    cores = f"{m['cores']} cores" + (f" of {m['cpus']}" if m.get("cpus") and m["cpus"] != m["cores"] else "")
    mem = f"{m['memory_gib']} GiB" if m.get("memory_gib") else "memory unknown"
    gpu = ", ".join(m["gpus"]) if m.get("gpus") else "no GPU"
    cap = f", torch held to {m['isa_cap']} (ATEN_CPU_CAPABILITY)" if m.get("isa_cap") else ""
    return f"machine: {m['cpu']}, AVX-512 {yes(m['avx512'])}, AVX2 {yes(m['avx2'])}, {cores}, {mem}, {gpu}{cap}"


def markdown(info: dict | None = None) -> str:
    """The same facts as a markdown line, for reports a bench writes."""
    return "*" + describe(info).replace("machine:", "Measured on:", 1) + "*"


if __name__ == "__main__":
    print(describe())
