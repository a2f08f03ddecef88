# Two commands: `make demo` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 60
DEMO_RATE ?= 5000
METRICS_PORT ?= 9108
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit services bench clean dashboards docs generate

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(VENV)/.installed
	$(PY) -m monitor.cli demo --seconds $(DEMO_SECONDS) --rate $(DEMO_RATE) --metrics-port $(METRICS_PORT)

# Debian's prometheus and alertmanager for the real-services tests (needs root or sudo).
services:
	bash deploy/local-stack/install-prometheus.sh
	bash deploy/local-stack/install-chromium.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not integration" $(PYTEST_ARGS)

test: $(VENV)/.installed services lint typecheck
	DRIFTWARDEN_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/throughput.py
	$(PY) bench/decode.py
	$(PY) bench/detectors.py
	$(PY) bench/adwin.py

# Generated files (committed; tests fail when stale): dashboards and Prometheus rules from
# grafana/mixin.py; docs/configuration.md, docs/metrics.md, docs/payloads.md and
# deploy/examples/demo.yaml from the code.
dashboards: $(VENV)/.installed
	$(PY) -m grafana.generate

docs: $(VENV)/.installed
	$(PY) -m monitor.dev.reference

generate: dashboards docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
