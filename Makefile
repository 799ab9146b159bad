# Quick start: `make demo` and `make test`. Both create .venv and install everything pinned first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := video audio depth infrared image
STAMP := $(VENV)/.lbind-installed
PLUGIN_PROJECTS := $(foreach p,$(PLUGINS),plugins/$(p)/pyproject.toml)

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(PLUGIN_PROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" $(foreach p,$(PLUGINS),-e plugins/$(p))
	touch $(STAMP)

demo: install
	$(BIN)/lbind demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 -q

# Everything but the tests marked slow (subprocesses, end-to-end runs, installs): under 2 minutes on 2 cores.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
