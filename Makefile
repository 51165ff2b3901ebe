# Poster Genre — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(shell [ -d ../shared/data/posters-imdb ] && echo ../shared/data/posters-imdb)
PYTEST_ARGS ?=

.PHONY: demo test lint venv test-deps tfjs-env clean help

help:
	@echo "make demo   - install, import posters from DATA, train CPU-quick models, serve http://127.0.0.1:8000"
	@echo "make test   - install what the tests need and run the whole suite"

$(BIN)/postergenre: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

venv: $(BIN)/postergenre

$(VENV)/.test-deps: $(BIN)/postergenre pyproject.toml
	$(BIN)/pip install -q -e '.[test,litert]'
	@touch $@

test-deps: $(VENV)/.test-deps

demo: venv
	$(BIN)/postergenre demo --data "$(DATA)"

test: test-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: test-deps
	$(BIN)/ruff check shared services tests
	$(BIN)/mypy shared services

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
