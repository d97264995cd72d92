# Two commands: `make demo` trains the example on 2 processes; `make test` runs the test suite.
# Both create .venv in this folder and install gradsync into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean bench bench-quick bench-horovod

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# tf_keras (Keras 2) without its dependencies, which would swap tensorflow-cpu for tensorflow.
	$(BIN)/python -m pip install --quiet --no-deps 'tf_keras==2.21.*'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gradsyncrun -np 2 $(BIN)/python examples/train_digits.py

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks

clean:
	rm -rf $(VENV) .pytest_cache

# Benchmarks (BENCHMARKS.md): `make bench`, `make bench-quick` (under 5 minutes on 2 cores),
# `make bench ARGS=--quick`. Results go to benchmarks/results/ and BENCHMARKS.md.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py --quick $(ARGS)

# Horovod 0.28.1 (Gloo) against tensorflow-cpu 2.16 in its own environment, with gradsync
# installed next to it so that both use the same TensorFlow. Not part of CI.
HVD_VENV := build/venv-horovod
HVD_BIN := $(HVD_VENV)/bin
HVD_STAMP := $(HVD_VENV)/.installed

$(HVD_STAMP): pyproject.toml
	test -x $(HVD_BIN)/python || $(PYTHON) -m venv $(HVD_VENV)
	$(HVD_BIN)/python -m pip install --quiet --upgrade pip
	$(HVD_BIN)/python -m pip install --quiet 'tensorflow-cpu==2.16.*' 'mpi4py>=4.0' 'mpich>=4.2' \
		matplotlib setuptools wheel cmake psutil pyyaml cloudpickle packaging cffi
	HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
		HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
		$(HVD_BIN)/python -m pip install --no-build-isolation --no-cache-dir 'horovod==0.28.1'
	$(HVD_BIN)/python -m pip install --quiet --no-deps -e .
	touch $(HVD_STAMP)

bench-horovod: $(HVD_STAMP)
	$(HVD_BIN)/python benchmarks/run.py --horovod $(ARGS)
