# make demo: install into .venv, then the whole mission on synthetic shapes in minutes.
# make test: install into .venv, then the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FRCNN  := $(VENV)/bin/frcnn
DEMO   ?= demo

.PHONY: demo test lint install clean

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes; plain pip so torch comes from the local wheel cache.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check frcnn_cli tests benchmarks

demo: install
	$(PY) -m frcnn_cli.demo --out $(DEMO)

clean:
	rm -rf $(DEMO) build dist .pytest_cache
