"""The machine line every bench prints beside its numbers (bench/machine.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is scripts, not an installed package
from bench.machine import describe, machine, markdown, parse_cpuinfo, parse_gpus, parse_meminfo  # noqa: E402

X86 = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16
"""
X86_NO512 = X86.replace(" avx512f avx512bw avx512_bf16", "")
ARM = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
"""


def test_cpuinfo_flags_and_model():
    assert parse_cpuinfo(X86) == {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpus": 2, "avx512": True, "avx2": True}
    no512 = parse_cpuinfo(X86_NO512)
    assert (no512["avx512"], no512["avx2"]) == (False, True)
    # avx512_bf16 alone is not AVX-512 foundation; avx2 must be a whole flag, not a prefix
    odd = parse_cpuinfo("model name: X\nflags: avx512_bf16 avx2x\n")
    assert (odd["avx512"], odd["avx2"]) == (False, False)
    arm = parse_cpuinfo(ARM)
    assert (arm["cpus"], arm["avx512"], arm["avx2"]) == (2, False, False) and arm["cpu"]


def test_meminfo():
    assert parse_meminfo("MemTotal:       16318156 kB\nMemFree: 1 kB\n") == 16318156 * 1024
    assert parse_meminfo("MemFree: 1 kB\n") is None


def test_gpu_lines():
    text = "NVIDIA H200, 143771 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\n\n"
    assert parse_gpus(text) == ["NVIDIA H200 (143771 MiB)", "NVIDIA A100-SXM4-80GB (81920 MiB)"]
    assert parse_gpus("") == [] and parse_gpus("No devices were found\n") == []


def test_describe_names_every_fact():
    info = {"cpu": "AMD EPYC 9654", "avx512": True, "avx2": True, "cores": 2, "cpus": 192,
            "memory_gib": 31.3, "gpus": ["NVIDIA H200 (143771 MiB)"]}
    line = describe(info)
    assert line == ("machine: AMD EPYC 9654, AVX-512 yes, AVX2 yes, 2 cores of 192, 31.3 GiB, "
                    "NVIDIA H200 (143771 MiB)")
    # a CPU emulating a smaller one says so, or its figures would pass for the real CPU's
    assert describe({**info, "isa_cap": "avx2"}).endswith("(143771 MiB), torch held to avx2 (ATEN_CPU_CAPABILITY)")
    bare = describe({**info, "avx512": False, "cpus": 2, "gpus": []})
    assert "AVX-512 no" in bare and "2 cores," in bare and bare.endswith("no GPU")
    assert markdown(info).startswith("*Measured on: AMD EPYC 9654")


def test_this_machine():
    m = machine()
    assert m["cores"] == len(os.sched_getaffinity(0)) and m["memory_gib"] > 0
    assert isinstance(m["avx512"], bool) and isinstance(m["gpus"], list)
    json.dumps(m)  # benches store it in their JSON as is


def test_every_bench_prints_the_machine():
    """Each bench script imports the helper and prints its line (the benches themselves are long)."""
    benches = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "machine.py")
    assert len(benches) >= 10
    for p in benches:
        text = p.read_text()
        assert "from bench.machine import" in text and "print(describe()" in text, p.name
        if "--json" in text:
            assert '"machine": machine()' in text, p.name
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "machine.py")], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("machine: ") and "AVX2" in out
