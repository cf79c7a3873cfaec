# Two commands do all the set-up on a fresh clone:
#   make run    the whole pipeline (synthetic data, embedded Milvus), with a printed report
#   make test   lint and the test suite (real Milvus, real Prefect flows)
# Both create .venv on first use. Options: make run ARGS="--epochs 4", make test PYTEST_ARGS="-k loss".

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch; pin it so pip does not pick a multi-GB CUDA build. Override for GPUs.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/towerbridge run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Test files run on TEST_WORKERS processes (pytest-xdist), each with its own embedded Milvus
# and Prefect server; a file's tests stay on one worker, so they share its module fixtures.
TEST_WORKERS ?= 4

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
