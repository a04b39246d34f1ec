# specsim: the two quick-start commands (`make run`, `make test`) and their setup.
# A fresh machine needs only python3 (3.11+) with venv; everything else comes from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SCENARIO ?= scenarios/quickstart.yaml

.PHONY: run test bench setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

## Simulate the bundled default scenario; writes reports/quickstart/.
run: $(VENV)/.installed
	$(VENV)/bin/specsim run $(SCENARIO)

## The test suite (CPU only, single-threaded torch as the profiler tests expect).
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

## Benchmarks print figures (speed, memory, calibration transfer); they are not tests.
bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/calibration_transfer.py

clean:
	rm -rf $(VENV) build *.egg-info
