# Poster Genre — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(shell [ -d ../shared/data/posters-imdb ] && echo ../shared/data/posters-imdb)
PYTEST_ARGS ?=
# Two pytest-xdist workers, one test file each at a time (tests/servers.py gives each worker its own Redis
# databases and ports). `make test PYTEST_WORKERS=` runs the suite in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile
# apt-get needs root; use sudo when we are not root and it exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: demo test slow-test stack-test lint venv test-deps system-deps tfjs-env node-deps clean help

help:
	@echo "make demo   - install, import posters from DATA, train CPU-quick models, serve http://127.0.0.1:8000"
	@echo "make test   - install what the tests need, lint, and run the suite but its slow system tests"
	@echo "make slow-test - the slow system tests: real workers, restarts, outages, the browser, benchmarks"
	@echo "make stack-test - build the images and run the Compose system with faults (Docker, root)"

$(BIN)/postergenre: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

venv: $(BIN)/postergenre

$(VENV)/.test-deps: $(BIN)/postergenre pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

test-deps: $(VENV)/.test-deps system-deps tfjs-env node-deps

# Binaries the tests start when no server answers (PostgreSQL, Redis) and the browser of the
# end-to-end test. Installed from Debian's packages only when missing.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian's packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The TF.js converter needs its own pinned environment (it does not install beside TF 2.21).
tfjs-env:
	@if [ -f scripts/make_tfjs_env.sh ]; then bash scripts/make_tfjs_env.sh; fi

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund

# TF.js for the page's in-browser mode and the export checks, from the npm registry (not committed).
node-deps: node_modules/.package-lock.json venv
	$(BIN)/python -m services.web.vendor

demo: venv
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory node-deps; \
	  else echo "npm not found: the page's in-browser mode stays off (server mode works)"; fi
	$(BIN)/postergenre demo --data "$(DATA)"

test: test-deps
	$(BIN)/ruff check shared services benchmarks tests
	$(BIN)/mypy shared services benchmarks tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "not stack and not slow" $(PYTEST_ARGS)

# The tests marked slow (pyproject.toml): whole jobs on real workers, broker/store/database restarts, the
# browser, the benchmarks. CI runs them after `make test` (.ci/run).
slow-test: test-deps
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "slow and not stack" $(PYTEST_ARGS)

# The Compose system for real: images built here, containers started, faults injected (docs/deploy.md).
stack-test: $(VENV)/.test-deps
	bash scripts/stack_test.sh $(PYTEST_ARGS)

lint: test-deps
	$(BIN)/ruff check shared services benchmarks tests
	$(BIN)/mypy shared services benchmarks tests
	$(BIN)/lint-imports

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
