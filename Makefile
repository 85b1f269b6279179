# Two commands for a new user: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-out

.PHONY: setup demo test lint unit clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,images]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/qconvert inspect sample_models/digits_cnn.onnx
	$(BIN)/qconvert quantize sample_models/digits_cnn.onnx -o $(DEMO)/digits_cnn.int8.onnx \
		--calib sample_models/digits.calib.npz --force
	$(BIN)/qconvert quantize sample_models/digits_transformer.onnx -o $(DEMO)/digits_transformer.int8.onnx \
		--mode dynamic --force

lint: $(STAMP)
	$(BIN)/ruff check qconvert tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint unit

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
