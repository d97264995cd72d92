# Two commands: `make demo` trains the example on 2 processes; `make test` runs the test suite.
# Both create .venv in this folder and install gradsync into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

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
	$(BIN)/ruff check src tests examples
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples

clean:
	rm -rf $(VENV) .pytest_cache
