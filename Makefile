# Two set-up commands: `make train` and `make test` (both create .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODEL ?= two_tower
PRESET ?= default
ARGS ?=
# Test processes (pytest-xdist; each test file runs whole in one of them); 0: one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install train test test-fast bench sdist clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m trainer.task --model $(MODEL) --preset $(PRESET) $(ARGS)

test: $(STAMP)
	$(PYTEST) tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.run_all $(ARGS)

sdist: $(STAMP)
	$(PY) -m build --sdist --outdir dist .

clean:
	rm -rf build dist *.egg-info jobs .pytest_cache
