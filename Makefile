# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all gpu-check install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt tests/reference-models.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/reference-models -r tests/reference-models.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/basisnet demo

# Two pytest-xdist workers, one torch thread each (tests/conftest.py); tests sharing a run stay together.
TEST_WORKERS ?= 2
test: $(STAMP)
	BASISNET_REQUIRE_REFERENCE=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The same suite in one process, file by file (slower; easier to read when a test hangs).
test-all: $(STAMP)
	BASISNET_REQUIRE_REFERENCE=1 $(BIN)/python -m pytest

# GPU-only tests, bench train and bench speed on a CUDA device -> benchmarks/results/gpu_check.{json,md}.
# Fails with a clear message where no GPU is visible. Offline GPU box with torch: PYTHONPATH=src python -m basisnet bench gpu
gpu-check: $(STAMP)
	$(BIN)/basisnet bench gpu

clean:
	rm -rf $(VENV) build src/*.egg-info runs
