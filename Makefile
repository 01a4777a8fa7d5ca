# TaskFlow: `make run` and `make test` work on a fresh Debian 12 machine (Python 3.11,
# Java 17, Maven). Everything they need is installed by the `install` target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps bench-deps tools run test test-fast lint bench stack-up stack-down clean

install: system-deps $(STAMP)

# PostgreSQL and Chromium from Debian's packages (initdb, pg_ctl; the dashboard tests'
# browser, which Playwright must never download); Java and Maven must be present.
system-deps:
	@command -v java >/dev/null || { echo "Java 17 is required" >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required" >&2; exit 1; }
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing PostgreSQL from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql </dev/null; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Chromium from Debian's packages (the dashboard's browser tests)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium </dev/null; \
	fi

$(STAMP): pyproject.toml sdk/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e sdk/python
	touch $(STAMP)

stack-up: install
	$(BIN)/taskflow stack up
	$(BIN)/taskflow migrate

stack-down:
	$(BIN)/taskflow stack down

run: stack-up
	$(BIN)/taskflow run

test: stack-up bench-deps tools
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests that need neither Kafka nor Postgres (fold, codec, schemas, limits, planners,
# pure logic): no stack is started, and they pass with it down.
test-fast: install
	$(BIN)/pytest -m "not stack" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy .
	cd sdk/python && ../../$(BIN)/mypy --strict taskflow_client

# helm for the chart's tests (tests/test_helm.py), built from the Go module proxy.
HELM_VERSION := v3.17.3
TOOLS := $(CURDIR)/.tools

# The Docker client's compose plugin, for `docker compose config` (tests/test_compose_config.py);
# no engine is needed. Its module has exclude directives, so `go install` refuses it: it is
# built from its own module directory.
COMPOSE_VERSION := v5.6.0
COMPOSE_PLUGIN := $(TOOLS)/docker/cli-plugins/docker-compose

tools: $(TOOLS)/helm $(COMPOSE_PLUGIN)

$(TOOLS)/helm:
	@command -v go >/dev/null || { echo "Go is required to build helm" >&2; exit 1; }
	GOBIN=$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(COMPOSE_PLUGIN):
	@command -v go >/dev/null || { echo "Go is required to build docker compose" >&2; exit 1; }
	src=$$(go mod download -json github.com/docker/compose/v5@$(COMPOSE_VERSION) | \
		$(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	tmp=$$(mktemp -d) && cp -r "$$src/." "$$tmp" && chmod -R u+w "$$tmp" && \
	(cd "$$tmp" && go build -o $(COMPOSE_PLUGIN) ./cmd) && rm -rf "$$tmp"

# The peers (Celery, Dramatiq) and their broker: redis-server from Debian's packages.
bench-deps: install $(VENV)/.bench-installed
	@if ! command -v redis-server >/dev/null; then \
		echo "installing redis-server from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server </dev/null; \
	fi

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# make bench [BENCH_ARGS="--quick --scenarios submit,e2e"]; see python -m bench --help.
bench: stack-up bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: stack-down
	rm -rf .stack $(VENV)
