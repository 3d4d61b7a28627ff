# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a GPU machine, e.g.: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.cdray-installed
SWEEP  ?= sweeps/tiny.yaml

.PHONY: setup demo test test-slow plan report replicate clean-store mlflow

setup: $(STAMP)

# triton: cdray's GPU kernels, which the tests run through triton's CPU interpreter. A CUDA torch
# brings its own triton, which is kept; 3.5's interpreter fails with numpy 2.4, 3.9's works.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install -q triton==3.9.0
	touch $(STAMP)

demo: setup
	$(BIN)/cdray sweep $(SWEEP)

plan: setup
	$(BIN)/cdray plan $(SWEEP)

report: setup
	$(BIN)/cdray report $(SWEEP)

# the laptop replication of the paper's design (docs/replication.md): under 90 minutes on 2 cores
replicate: setup
	$(BIN)/cdray sweep sweeps/replicate.yaml
	$(BIN)/cdray report sweeps/replicate.yaml

# the fast suite (about 5 minutes on 2 cores); `make test-slow` adds the end-to-end and fault
# tests that start Ray clusters and kill processes (CI runs both)
test: setup
	$(BIN)/pytest -q --timeout=900 --durations=10 -m "not slow" tests

test-slow: setup
	$(BIN)/pytest -q --timeout=1800 --durations=25 -m slow tests

clean-store:
	rm -rf .cdray

# A lean MLflow tracking server on 127.0.0.1:$(MLFLOW_PORT) (sqlite + proxied artifacts under .cdray/mlflow-server)
MLFLOW_PORT ?= 5000
mlflow: setup
	$(BIN)/cdray mlflow --port $(MLFLOW_PORT)
