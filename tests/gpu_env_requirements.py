"""Requirements for `make gpu-env`: upstream vLLM's own dependencies, with its pins, less the CUDA
kernels and media packages that only a GPU run loads, and its torch as the CPU build.

That is enough to import vLLM's Python API (`LLM`, `EngineArgs`, `SamplingParams`, the run_batch
parser) on a machine without a GPU, without the gigabytes of CUDA wheels.

    python tests/gpu_env_requirements.py > requirements.txt   (in the env where vllm is installed --no-deps)
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys

# kernels, CUDA-only libraries and media decoders: never imported before an engine starts on a GPU
GPU_ONLY = {"torchaudio", "torchvision", "torchcodec", "pynvvideocodec", "flashinfer-python", "apache-tvm-ffi",
            "tilelang", "nvidia-cudnn-frontend", "nvtx", "fastsafetensors", "instanttensor", "nvidia-cutlass-dsl",
            "quack-kernels", "tokenspeed-mla", "humming-kernels", "numba"}


def requirements(dist: str = "vllm") -> list[str]:
    out = []
    for req in md.requires(dist) or []:
        spec, _, marker = req.partition(";")
        if "extra ==" in marker:
            continue
        name = re.split(r"[\s\[<>=!~]", spec.strip(), maxsplit=1)[0]
        if name.lower() in GPU_ONLY:
            continue
        if name.lower() == "torch":  # the CPU wheel of the same release (a local version label)
            spec = re.sub(r"==\s*([0-9.]+)$", r"==\1+cpu", spec.strip())
        out.append(spec.strip() + (f"; {marker.strip()}" if marker.strip() else ""))
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "vllm")))
