"""The offline engine's CPU defaults: the weight type follows what the CPU computes fast, and
seeded requests are never prefilled in chunks (the CPU build crashes on that)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import importorskip_ci

ROOT = Path(__file__).resolve().parents[1]


def _picked(env: dict[str, str]) -> str:
    code = "from generator.engine.backends.vllm_offline import cpu_dtype; print(cpu_dtype())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_an_avx2_only_cpu_gets_float32():
    importorskip_ci("torch")
    assert _picked({"ATEN_CPU_CAPABILITY": "avx2"}) == "float32"
    assert _picked({"ATEN_CPU_CAPABILITY": "default"}) == "float32"


def test_the_native_choice_matches_what_torch_reports():
    torch = importorskip_ci("torch")
    capability = torch.backends.cpu.get_cpu_capability()
    expected = "float32" if capability in ("AVX2", "DEFAULT") else (
        "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32")
    assert _picked({}) == expected


def test_cpu_engine_defaults_carry_the_type_and_the_seed_safe_settings():
    from generator.engine.backends.vllm_offline import cpu_dtype, engine_defaults, seed_safe

    kwargs = seed_safe(engine_defaults(gpu=False), gpu=False)
    assert kwargs["dtype"] == cpu_dtype()
    assert kwargs["enable_chunked_prefill"] is False
    assert kwargs["max_num_batched_tokens"] >= kwargs["max_model_len"]
    assert "dtype" not in engine_defaults(gpu=True)  # a GPU keeps the model's own type
    # a spec's engine settings win over the defaults (the backend updates the defaults with them)
    assert seed_safe({**engine_defaults(gpu=False), "dtype": "bfloat16"}, gpu=False)["dtype"] == "bfloat16"
