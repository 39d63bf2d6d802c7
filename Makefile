# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make install`: only the pinned .venv (the README's quickstart starts here).
.PHONY: install demo test unit integration lint typecheck bench system-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests and benchmarks use: promtool and a real Prometheus,
# Alertmanager, and wrk; PostgreSQL's server binaries (off PATH, under
# /usr/lib/postgresql/*/bin) for the rollout store's tests. Installed only when missing.
SYSTEM_TOOLS := promtool prometheus prometheus-alertmanager amtool wrk chromium
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager wrk chromium >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian packages for: postgresql"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	fi

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rampart demo

# Tests run in a random order: pytest-randomly prints the seed in the header, and
# `make test PYTEST_ARGS=--randomly-seed=N` runs that order again;
# `make test PYTEST_ARGS="-p no:randomly"` keeps file order.
PYTEST_ARGS ?=
test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: $(STAMP) system-deps
	$(BIN)/pytest -m integration

bench: $(STAMP) system-deps
	$(BIN)/python tests/benchmarks/serving.py
	$(BIN)/python tests/benchmarks/rollback.py

clean:
	rm -rf $(VENV) .rampart .pytest_cache .mypy_cache .ruff_cache
