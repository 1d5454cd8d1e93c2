# madcluster_exp — every target is listed by `make help`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# CPU torch, explicitly: on these machines `torch==2.13.0` resolves to the CPU wheel on local disk.
# Elsewhere, point TORCH_PIP_ARGS at a CPU wheel index (e.g. --index-url <your CPU wheel index>)
# so an unpinned resolve never drags in gigabytes of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
DATASET ?= SMD
PORT ?= 5000
# Where `make ui` finds the runs: <OUTPUTS>/mlflow.db (relative to this directory).
OUTPUTS ?= outputs
SERVER_ARTIFACTS ?= outputs/server-artifacts
# `make dashboard`: the searches' study storage (empty: $$MADCLUSTER_OPTUNA_STORAGE) and its port.
STORAGE ?=
DASHBOARD_PORT ?= 8080

.DEFAULT_GOAL := help
.PHONY: help install lint format test test-all test-cuda run smoke bench data ui server dashboard clean

# `make help` shows the values in force (make help PORT=5001 shows 5001), not $(PORT).
HELP_VALUES := -e 's|$$(PORT)|$(PORT)|g' -e 's|$$(OUTPUTS)|$(OUTPUTS)|g' \
	-e 's|$$(DATASET)|$(DATASET)|g' -e 's|$$(SERVER_ARTIFACTS)|$(SERVER_ARTIFACTS)|g' \
	-e 's|$$(DASHBOARD_PORT)|$(DASHBOARD_PORT)|g' -e 's|\$$\$$|$$|g'

help: ## list every target
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed $(HELP_VALUES) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## install CPU torch, then the package (editable) with runtime, test and Ray dependencies
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	# hydra-optuna-sweeper (an earlier dependency) pins optuna<3: removed where it is installed.
	$(PIP) uninstall -y hydra-optuna-sweeper
	$(PIP) install -e ".[dev,ray]"
	# vus is the metric tests' reference; its declared dependencies (TensorFlow, ...) are not
	# needed by get_metrics, so it is installed without them.
	$(PIP) install --no-deps "vus==0.0.6"
	# TSB-AD 1.5's get_metrics is the reference of metrics.definition=tsbad; its metrics module
	# needs only numpy and scikit-learn, not the package's declared torch/transformers/stumpy.
	$(PIP) install --no-deps "tsb-ad==1.5"

lint: ## ruff: lint rules and formatting (what .ci/run checks first)
	$(PYTHON) -m ruff check madcluster_exp tests
	$(PYTHON) -m ruff format --check madcluster_exp tests

format: ## apply ruff's formatting and safe lint fixes
	$(PYTHON) -m ruff check --fix madcluster_exp tests
	$(PYTHON) -m ruff format madcluster_exp tests

test: ## run the default test suite (excludes tests marked slow)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-all: ## run every test, slow ones included
	$(PYTHON) -m pytest -m "" $(PYTEST_ARGS)

test-cuda: ## GPU checks (device=cuda, train.amp, deterministic); needs a CUDA device
	$(PYTHON) -m pytest -m cuda $(PYTEST_ARGS) tests/test_cuda.py

run: ## train + evaluate the default configuration on the embedded synthetic dataset
	$(PYTHON) -m madcluster_exp

smoke: ## a seconds-long end-to-end run (debug=fast)
	$(PYTHON) -m madcluster_exp debug=fast

bench: ## benchmarks with ratios against baselines measured in the same run (outputs/bench/*.json)
	$(PYTHON) -m madcluster_exp.bench

data: ## download, verify and unpack a dataset: make data DATASET=SMD (SMD, MSL, SMAP, PSM)
	$(PYTHON) -m madcluster_exp.data download $(DATASET)

ui: ## MLflow UI over $(OUTPUTS)/mlflow.db; prints the URL of the runs (http://127.0.0.1:$(PORT)/#/...)
	$(PYTHON) -m madcluster_exp.tracking.ui "outputs=$(OUTPUTS)" port=$(PORT)

server: ## team MLflow server on 127.0.0.1:$(PORT), PostgreSQL store ($$MLFLOW_BACKEND_URI), proxied artifacts
	$(PYTHON) -m madcluster_exp.tracking.server port=$(PORT) "artifacts=$(SERVER_ARTIFACTS)"

dashboard: ## optuna-dashboard on 127.0.0.1:$(DASHBOARD_PORT) over a search's study storage (STORAGE=<url>, default $$MADCLUSTER_OPTUNA_STORAGE)
	$(PYTHON) -m madcluster_exp.launchers.dashboard port=$(DASHBOARD_PORT) $(if $(STORAGE),"storage=$(STORAGE)")

clean: ## remove Hydra run directories and caches (keeps outputs/mlflow.db)
	rm -rf outputs/runs outputs/multiruns .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
