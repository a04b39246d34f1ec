# specsim: the two quick-start commands (`make run`, `make test`) and their setup.
# A fresh machine needs only python3 (3.11+) with venv; everything else comes from pyproject.toml.
# One venv serves both: `make run` installs the package alone (no torch); `make test` adds the
# test extras (pytest, hypothesis, torch for the profiler tests) on top of it.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SCENARIO ?= scenarios/quickstart.yaml

.PHONY: run test bench setup setup-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

## Simulate the bundled default scenario; writes reports/quickstart/.
run: $(VENV)/.installed
	$(VENV)/bin/specsim run $(SCENARIO)

## The test suite (CPU only, single-threaded torch as the profiler tests expect).
test: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

## Benchmarks print figures (speed, memory, calibration transfer); they are not tests.
bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/calibration_transfer.py

clean:
	rm -rf $(VENV) build *.egg-info
