# Scoreboard: operator commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
PY := python3
DOCKER_ENGINE := $(shell docker info >/dev/null 2>&1 && echo yes)

.PHONY: help
help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n",$$1,$$2}'

.PHONY: tools
tools: ## install what the tests need and is missing (Debian packages, uv, promtool, kustomize)
	scripts/install-tools.sh

.PHONY: deps
deps: ## install uv (if missing) and the locked Python environment
	@command -v $(UV) >/dev/null || $(PY) -m pip install -q uv
	$(UV) sync --all-packages --frozen -q

.PHONY: infra
infra: ## start PostgreSQL, Redis and Kafka as local processes (installing what is missing)
	$(PY) scripts/infra.py up

.PHONY: migrate
migrate: deps infra ## migrations and grants (as the owner), the Kafka topics and ACLs, the Redis users
	$(UV) run --frozen scoreboard-migrate
	$(UV) run --frozen scoreboard-topics
	$(UV) run --frozen scoreboard-redis-users

.PHONY: up
up: ## start everything; the live board at http://127.0.0.1:8080/
ifeq ($(DOCKER_ENGINE),yes)
	docker compose up -d --build --wait
else
	@$(MAKE) --no-print-directory migrate
	$(PY) scripts/services.py start
endif
	@echo "Scoreboard is up: http://127.0.0.1:8080/"

.PHONY: demo
demo: up ## `make up` plus simulated players, so the board moves
	$(UV) run --frozen python bench/simulate.py --players 25 --duration 600

.PHONY: observe
observe: ## a real Prometheus next to `make up` (local processes): alert rules loaded, http://127.0.0.1:9090/
	$(PY) scripts/observe.py start

.PHONY: down
down: ## stop what `make up` started (data stays)
	-$(PY) scripts/observe.py stop
ifeq ($(DOCKER_ENGINE),yes)
	docker compose down
else
	-$(PY) scripts/services.py stop
	$(PY) scripts/infra.py down
endif

.PHONY: clean
clean: ## stop everything and wipe local data (.local/, the database)
ifeq ($(DOCKER_ENGINE),yes)
	docker compose down -v
else
	-$(PY) scripts/services.py stop
	$(PY) scripts/infra.py clean
endif

.PHONY: lint
lint: deps ## ruff and mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs services conftest.py bench scripts tests deploy

.PHONY: test
test: tools deps lint ## lint, then the whole suite against real PostgreSQL, Redis and Kafka
ifneq ($(DOCKER_ENGINE),yes)
	$(PY) scripts/infra.py up
endif
	$(UV) run --frozen pytest

.PHONY: schemas
schemas: deps ## regenerate the JSON Schemas in schemas/ from the event models
	$(UV) run --frozen python -m common.schemas schemas

.PHONY: bench
bench: deps infra ## the benchmarks; JSON and PNG results in bench/results/
	$(UV) run --frozen python bench/run_all.py

.PHONY: chaos
chaos: deps ## crashes under load on a private stack: lost/doubled updates and events (CHAOS_ARGS=--help)
	$(UV) run --frozen python bench/chaos.py $(CHAOS_ARGS)
