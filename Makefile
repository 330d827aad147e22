# The commands the README quotes. `make train` and `make test` create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup train test test-slow test-all bench clean

$(BIN)/frtrain-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

setup: $(BIN)/frtrain-train  ## create .venv and install frtrain with its test tools

train: setup  ## train the default model (CPU-sized, synthetic faces); pass overrides with ARGS="head=cosface ..."
	$(BIN)/frtrain-train $(ARGS)

test: setup  ## the fast tier: every test not marked slow (the inner loop, a few minutes)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup  ## the slow tier: multi-process, training-grid and packaging tests
	$(BIN)/python -m pytest -q -m slow

test-all: setup  ## both tiers (what CI runs, in two steps)
	$(BIN)/python -m pytest -q

bench: setup  ## speed and memory benchmarks -> docs/benchmarks.md
	$(BIN)/python scripts/bench_heads.py

clean:
	rm -rf $(VENV) runs build *.egg-info
