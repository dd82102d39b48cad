# ecard: two commands on a fresh machine. `make run` starts the product, `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench loadtest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m launcher

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m loadtests.bench

loadtest: $(STAMP)
	$(PY) -m loadtests.locust_run

clean:
	rm -rf $(VENV) var .pytest_cache

deskreader-deps: $(STAMP)
	$(PY) -m deskreader.install
