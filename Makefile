# The targets CI runs are the ones developers run: `make test` is what .ci/run calls.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The labeled data sets (never in the repository): see ../shared/data/README.md.
DATA ?= ../shared/data

.PHONY: help install system-deps run test test-unit test-integration lint format bench model evaluate clean

help:
	@echo "make run    - start otelai on its embedded default (OTLP gRPC :4317, HTTP :4318, metrics :9464)"
	@echo "make test   - the whole test suite (unit + integration with real collectors and Prometheus)"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - benchmarks, JSON results in benchmarks/results/"
	@echo "make model  - retrain the shipped default model bundle (otelai/models/default) from DATA=$(DATA)"
	@echo "make evaluate - train and evaluate on every data set in DATA, reports in benchmarks/results/quality/"

# The venv is made on first use from pinned requirements; the stamp re-runs it when they change.
$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Prometheus (and promtool) from Debian for the real-scrape test; needs root, as CI has.
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

run: $(STAMP)
	@echo "otelai: OTLP gRPC on :4317, OTLP/HTTP on :4318, Prometheus metrics on :9464"
	@echo "forwarded data goes to ./otelai-out/forwarded.jsonl (OTLP JSON lines)"
	@echo "send it data, e.g.:"
	@echo "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 <your app with the OpenTelemetry SDK>"
	@echo "  $(VENV)/bin/otelai replay --dataset otel-demo --path ../shared/data/otel-demo/train --endpoint localhost:4317"
	@echo "  curl -s localhost:9464/metrics | grep otelai_"
	$(VENV)/bin/otelai serve

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) system-deps
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check otelai tests benchmarks
	$(VENV)/bin/ruff format --check otelai tests benchmarks
	$(VENV)/bin/mypy --strict otelai benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format otelai tests benchmarks
	$(VENV)/bin/ruff check --fix otelai tests benchmarks

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(PY) benchmarks/parse_floor.py --out benchmarks/results/parse_floor.json
	$(PY) benchmarks/hop.py --out benchmarks/results/hop.json

# The default bundle: the trace detectors trained on the OpenTelemetry Demo's normal windows.
model: $(STAMP)
	@test -d $(DATA)/otel-demo || { echo "no data set at $(DATA)/otel-demo (set DATA=...)"; exit 2; }
	$(VENV)/bin/otelai train --dataset otel-demo --path $(DATA)/otel-demo --out otelai/models/default --seed 0 --no-progress

evaluate: $(STAMP)
	$(PY) benchmarks/quality.py --data $(DATA) --out benchmarks/results/quality

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache otelai-out benchmarks/results
