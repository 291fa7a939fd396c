# minutecast: `make help` lists the targets.
CACHE ?= $(or $(MINUTECAST_CACHE),$(HOME)/.cache/minutecast)
VENV ?= $(or $(MINUTECAST_VENV),$(CACHE)/venv)
PY := $(VENV)/bin/python
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

.PHONY: help setup run serve docs docs-check test test-fast lint typecheck bench bench-quick infra-up infra-down infra-status compose-test clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install everything missing (apt packages, venv, horovod, Maven jars)
	@bash infra/bootstrap.sh

# Recorded bars to replay when Yahoo does not answer (machines without internet).
REPLAY_DATA ?= $(or $(MINUTECAST_REPLAY_DATA),$(wildcard $(CURDIR)/../shared/data/bars-1m))

# Forecasts first: horovod (only the trainer needs it) builds in the background; the trainer starts when it is in.
run: ## set up, start Kafka + Redis, run the whole pipeline and the dashboard (Ctrl-C stops it)
	@bash infra/bootstrap.sh --defer-horovod
	@MINUTECAST_REPLAY_DATA="$(REPLAY_DATA)" $(VENV)/bin/minutecast run

serve: ## the dashboard and HTTP API alone, on http://127.0.0.1:8080/ (`make run` starts it too)
	@$(VENV)/bin/minutecast serve

docs: ## serve the documentation site (mkdocs, material) on http://127.0.0.1:8000/, rebuilt on each edit
	@NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# --strict: a broken link or anchor, a page missing from the nav or a nav entry without a page fails the build.
docs-check: ## build the documentation site strictly into build/site
	@NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

test: setup ## set up, start the real services and run lint, the strict docs build and the whole test suite
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory docs-check
	@$(VENV)/bin/minutecast infra up
	@$(PY) -m pytest -p no:cacheprovider

test-fast: ## unit tests only (no services)
	@$(PY) -m pytest -m "not integration" -q

# --no-cache: lint-imports takes well under a second here; no cache directory in the work tree.
lint: ## ruff (with bandit's S rules) and lint-imports (the layering contracts in pyproject.toml)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/lint-imports --no-cache

typecheck: ## mypy
	@$(VENV)/bin/mypy

bench: setup ## run every benchmark (about 30 minutes)
	@$(VENV)/bin/minutecast bench

bench-quick: setup ## run every benchmark on small inputs (under 5 minutes)
	@$(VENV)/bin/minutecast bench --quick

compose-test: setup ## build the images, run docker-compose.yml with podman, check forecasts (root)
	@$(PY) -m pytest -p no:cacheprovider -m compose -s tests/test_compose_run.py

infra-up: ## start local Kafka and Redis
	@$(VENV)/bin/minutecast infra up
infra-down: ## stop them
	@$(VENV)/bin/minutecast infra down
infra-status: ## show them
	@$(VENV)/bin/minutecast infra status

clean: ## remove caches in the work tree
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
