# Enclava — `make run` serves on the embedded defaults, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_TEST_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test lint typecheck test-embedded test-postgres bench mock-upstream migration format clean

install: $(STAMP)

# Re-installs only when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: install
	$(BIN)/enclava serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test-embedded: install
	ENCLAVA_TEST_BACKEND=embedded $(BIN)/pytest -q -p no:cacheprovider

test-postgres: install
	ENCLAVA_TEST_BACKEND=postgres ENCLAVA_TEST_PG_ADMIN_URL=$(PG_TEST_URL) \
	ENCLAVA_TEST_REDIS_URL=$(REDIS_TEST_URL) $(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck test-embedded test-postgres

bench: install
	$(BIN)/python -m bench

mock-upstream: install
	$(BIN)/enclava mock-upstream

# Regenerate a migration from the models: make migration MESSAGE="add webhooks"
migration: install
	$(BIN)/python -c "from enclava.config import Settings; from enclava.migrations import runner; runner.revision(Settings(), '$(MESSAGE)')"

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
