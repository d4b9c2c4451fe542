# Nightbox developer commands. `make demo` and `make test` are the quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test lint typecheck bench deps vendor clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/nightbox demo $(ARGS)

deps: $(STAMP)
	@sh tests/ensure-mosquitto
	@sh tests/ensure-postgresql
	@sh tests/ensure-node
	@sh tests/ensure-tmux
	@sh tests/ensure-ffmpeg
	@sh tests/ensure-chromium
	@sh tests/ensure-image-tools

lint: $(STAMP)
	$(BIN)/ruff format --check appliance hardware provisioning firmware tui bench tests
	$(BIN)/ruff check appliance hardware provisioning firmware tui bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: deps lint typecheck
	$(BIN)/pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.decode --json
	$(BIN)/python -m bench.ingest --json
	$(BIN)/python -m bench.payments --json
	$(BIN)/python -m bench.drops --json
	$(BIN)/python -m bench.sync --json
	$(BIN)/python -m bench.encode --json

# Refresh the committed copy of <model-viewer> that the portal serves, after
# changing the version of @google/model-viewer in package.json.
VENDOR := appliance/portal/static/vendor
vendor:
	npm ci --no-audit --no-fund --loglevel=error
	cp node_modules/@google/model-viewer/dist/model-viewer.min.js $(VENDOR)/model-viewer.min.js
	cp node_modules/@google/model-viewer/LICENSE $(VENDOR)/model-viewer.LICENSE
	cp node_modules/three/LICENSE $(VENDOR)/three.LICENSE
	cp node_modules/lit/LICENSE $(VENDOR)/lit.LICENSE
	cp node_modules/@monogrid/gainmap-js/LICENSE $(VENDOR)/gainmap-js.LICENSE

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
