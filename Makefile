# The README's two commands are the contract: `make demo` and `make test` on a fresh machine.
# The venv's interpreter: an optimized CPython build when the machine has one (scripts/pick-python).
PYTHON ?= $(shell scripts/pick-python)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test lint typecheck pytest bench install dev clean docs

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "shadowtap needs Python >= 3.11"; print("creating $(VENV) with", sys.executable, sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/shadowtap demo

lint: dev
	$(VENV)/bin/ruff check .

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev
	scripts/ensure-system-deps.sh chromium
	$(PY) -m pytest

test: lint typecheck pytest

bench: dev
	scripts/ensure-system-deps.sh nginx wrk valgrind
	$(PY) bench/run_all.py

docs: dev
	$(PY) -m shadowtap.docgen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
