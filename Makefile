# make run: set up .venv and run the embedded default experiment (no download).
# make test: set up .venv and run the linter and the test suite (one worker per core, plus one to fill the time
# other workers spend waiting on Slurm and subprocesses).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

.PHONY: setup run test test-all bench science lint slurm-up slurm-down clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(PY) run.py

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -n $(WORKERS) --dist worksteal

# also the slow scientific checks (minutes)
test-all: lint
	$(PY) -m pytest -n $(WORKERS) --dist worksteal -m ''

bench: setup
	$(PY) benchmarks/run_all.py

# every experiment of docs/science.md, at its documented budget (hours on 2 cores)
science: setup
	scripts/science.sh

slurm-up:
	scripts/slurm-local.sh up

slurm-down:
	scripts/slurm-local.sh down

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
