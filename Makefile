# make run: set up .venv and run the embedded default experiment (no download).
# make test: set up .venv and run the linter and the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench lint slurm-up slurm-down clean

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
	$(PY) -m pytest

# also the slow scientific checks (minutes)
test-all: lint
	$(PY) -m pytest -m ''

bench: setup
	$(PY) benchmarks/run_all.py

slurm-up:
	scripts/slurm-local.sh up

slurm-down:
	scripts/slurm-local.sh down

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
