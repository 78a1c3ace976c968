# wav2brain — every command installs what it needs first (pip only, no root).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BENCH_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-spec

.PHONY: install test demo bench lint clean FORCE

install: $(STAMP)

# Rewritten only when TORCH_SPEC changes, so a new spec reinstalls and an unchanged one does no work.
$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC)' | cmp -s - $@ || echo '$(TORCH_SPEC)' > $@

$(STAMP): pyproject.toml Makefile $(TORCH_STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 -q tests

demo: install
	$(BIN)/wav2brain demo --out runs/demo

bench: install
	mkdir -p benchmarks/results
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b $(BENCH_ARGS) || exit 1; done

lint: install
	$(BIN)/ruff check src tests benchmarks dataset_scripts train.py
	$(BIN)/ruff format --check src tests benchmarks dataset_scripts train.py

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
