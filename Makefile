# Two commands for a new user: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-out

OV_VENV := .venv-openvino
OV_STAMP := $(OV_VENV)/.installed

.PHONY: setup demo test lint unit unit-optimized clean bench fuzz test-openvino test-cluster docs examples

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,images]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/qconvert inspect sample_models/digits_cnn.onnx
	$(BIN)/qconvert quantize sample_models/digits_cnn.onnx -o $(DEMO)/digits_cnn.int8.onnx --force \
		--calib sample_models/digits.calib.npz \
		--validate sample_models/digits.eval.npz --labels labels --max-drop 1 \
		--benchmark --runs 200 --analyze --report $(DEMO)/digits_cnn.report.html
	$(BIN)/qconvert quantize sample_models/digits_transformer.onnx -o $(DEMO)/digits_transformer.int8.onnx --force \
		--mode dynamic \
		--validate sample_models/digits.eval.npz --labels labels --max-drop 1 \
		--benchmark --runs 200 --report $(DEMO)/digits_transformer.report.json
	$(BIN)/qconvert convert sample_models/digits_cnn.onnx -o $(DEMO)/digits_cnn.fp16.onnx --force \
		--calib sample_models/digits.calib.npz
	$(BIN)/qconvert quantize sample_models/digits_cnn_qat.onnx -o $(DEMO)/digits_cnn_qat.int8.onnx --force \
		--validate sample_models/digits.eval.npz --labels labels --max-drop 1
	mkdir -p $(DEMO)/tiny_llm
	$(BIN)/qconvert quantize sample_models/tiny_llm/model.onnx -o $(DEMO)/tiny_llm/model.onnx --force \
		--mode weight-only --calib-text sample_models/tiny_llm/calib.txt \
		--text sample_models/tiny_llm/eval.txt --max-ppl-ratio 1.01 \
		--benchmark --runs 5 --report $(DEMO)/tiny_llm.report.html
	@echo "open $(DEMO)/digits_cnn.report.html (and $(DEMO)/tiny_llm.report.html) in a browser for the reports"

lint: $(STAMP)
	$(BIN)/ruff check qconvert tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

# The suite again with asserts stripped from qconvert (python -O): no check may rely on `assert`.
unit-optimized: $(STAMP)
	$(BIN)/python -O -m pytest -q -p no:cacheprovider

test: lint unit unit-optimized

# onnxruntime-openvino replaces the onnxruntime package (same module), so it gets its own environment:
# the whole suite runs again on that runtime, with tests/openvino using the OpenVINO provider for real.
$(OV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OV_VENV)
	$(OV_VENV)/bin/pip install --quiet --upgrade pip
	$(OV_VENV)/bin/pip install --quiet -e '.[test]'
	$(OV_VENV)/bin/pip uninstall --quiet --yes onnxruntime
	$(OV_VENV)/bin/pip install --quiet onnxruntime-openvino
	touch $(OV_STAMP)

test-openvino: $(OV_STAMP)
	$(OV_VENV)/bin/pytest -q

# Batches on a real Dask scheduler and two workers on 127.0.0.1 (tests/cluster/run.sh starts and stops them).
test-cluster: $(STAMP)
	bash tests/cluster/run.sh $(VENV)

# The README's command reference, generated from the commands' --help (tests/cli/test_reference.py checks it).
docs: $(STAMP)
	$(BIN)/python -m qconvert.cli.reference --write README.md

# examples/Makefile: quantize, gate and benchmark the sample CNN (fails on a missed gate).
examples: $(STAMP)
	$(MAKE) -C examples QCONVERT=$(abspath $(BIN))/qconvert OUT=$(abspath $(DEMO))/examples

# Long fuzz runs of the model loader and the .npy/.npz readers (the suite runs a bounded one).
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --only model --examples 20000
	$(BIN)/python bench/fuzz.py --only npy --only npz --examples 5000

bench: $(STAMP)
	$(BIN)/python bench/speedup.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/legacy_zoo.py

clean:
	rm -rf $(VENV) $(OV_VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
