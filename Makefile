# The README's two commands are the contract: `make demo` and `make test` on a fresh machine.
# The venv's interpreter: an optimized CPython build when the machine has one (scripts/pick-python).
PYTHON ?= $(shell scripts/pick-python)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test lint typecheck pytest pytest-interpreted bench install dev native native-or-interpreted clean docs wheel

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

$(VENV)/.installed-native: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[native]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# The data path (wire and the proxy hot modules) compiled with mypyc (wire/native.py); rebuilt only when a source changed.
# Builds are kept in .venv/native-cache by their sources' digest: a wheel built from the same tree
# (the packaging test's image build) takes the build from there instead of compiling it again.
NATIVE_CACHE = SHADOWTAP_NATIVE_CACHE=$(CURDIR)/$(VENV)/native-cache
native: $(VENV)/.installed-native
	$(PY) scripts/build_native.py --check || $(NATIVE_CACHE) $(PY) scripts/build_native.py

# The demo runs without a C compiler too: then the data path runs interpreted, and says so.
native-or-interpreted: $(VENV)/.installed-native
	$(PY) scripts/build_native.py --check || $(NATIVE_CACHE) $(PY) scripts/build_native.py || \
		echo "make: no compiled data path (see above); the proxy runs interpreted"

demo: install native-or-interpreted
	$(VENV)/bin/shadowtap demo

lint: dev
	$(VENV)/bin/ruff check .

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev native
	scripts/ensure-system-deps.sh chromium
	SHADOWTAP_EXPECT_COMPILED=1 $(PY) -m pytest -n auto --dist loadfile

# The proxy's tests once more on the interpreted sources, the fallback where nothing was compiled.
pytest-interpreted: dev
	SHADOWTAP_PURE=1 $(PY) -m pytest -q -n auto --dist loadfile tests/proxy

test: lint typecheck pytest pytest-interpreted

bench: dev native
	scripts/ensure-system-deps.sh nginx wrk valgrind
	$(PY) bench/run_all.py

# The sdist and a platform wheel with the compiled data path, into dist/ (README, "Install").
# SHADOWTAP_NATIVE=0 makes the wheel pure (it then runs interpreted, and says so).
wheel: dev
	rm -rf dist
	SHADOWTAP_NATIVE=$${SHADOWTAP_NATIVE:-1} $(PY) -m build --no-isolation --outdir dist

docs: dev
	$(PY) -m shadowtap.docgen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache proxy/_compiled wire/_compiled replayer/_compiled recorder/_compiled differ/_compiled build dist
