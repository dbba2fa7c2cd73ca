# `make test` sets everything up on a fresh machine and runs the test suite.
# `make run` runs the main job (the built-in organism study) on the default.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

run: setup
	$(VENV)/bin/safety-subspaces run --out runs/organism

clean:
	rm -rf $(VENV) runs .pytest_cache
