# Two entry points on a fresh machine: `make demo` (run the main job locally) and `make test` (the suite).
# Each installs what it needs: a .venv from pinned requirements and a pinned Azurite from package-lock.json.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: setup test lint typecheck pytest demo bench constraints clean

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): requirements.txt requirements-dev.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt
	@touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(STAMP_PY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_PY)
	$(BIN)/mypy

pytest: setup
	bash .ci/pytest-strict $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup
	$(BIN)/python -m devkit demo

bench: setup
	$(BIN)/python -m bench

constraints:
	rm -rf /tmp/constraints-venv && $(PYTHON) -m venv /tmp/constraints-venv
	/tmp/constraints-venv/bin/pip install -q -r requirements-dev.txt
	{ echo "# Full pin set (transitive too), from 'pip freeze' of a fresh .venv built from requirements-dev.txt."; \
	  echo "# Regenerate with: make constraints"; /tmp/constraints-venv/bin/pip freeze; } > constraints.txt

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
