"""Every JSON document the CLI prints (--json) or writes (--report x.json) is valid against
docs/report.schema.json, and the schema is strict enough to notice a field it does not describe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.results import SCHEMA_VERSION
from tests.conftest import REPO, SAMPLES

runner = CliRunner()
SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
CNN = SAMPLES / "digits_cnn.onnx"
TRANSFORMER = SAMPLES / "digits_transformer.onnx"
CALIB = SAMPLES / "digits.calib.npz"
EVAL = SAMPLES / "digits.eval.npz"


def _json(*args: object, code: int = 0) -> dict[str, Any]:
    """Run a command in-process; its stdout must be exactly one JSON document, valid against the schema."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    _valid(document)
    return document


def _valid(document: dict[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schema") / "cnn.int8.onnx"
    report = out.with_suffix(".json")
    document = _json("quantize", CNN, "-o", out, "--calib", CALIB, "--calib-samples", 16, "--report", report,
                     "--json")
    assert document["command"] == "quantize"
    assert json.loads(report.read_text()) == document, "--report x.json holds the document --json prints"
    return out


def test_the_schema_is_valid_and_describes_every_property() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$defs"]["inspect_document"]["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    undescribed = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if not isinstance(sub, dict) or not sub.get("description"):
                    undescribed.append(f"{where}/{name}")
            for key, sub in node.items():
                if key != "if":  # conditions name properties to test them, not to describe them
                    walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(SCHEMA, "")
    assert not undescribed


def test_inspect() -> None:
    assert _json("inspect", CNN, "--json")["inputs"][0]["name"] == "image"


def test_providers() -> None:
    assert "cpu" in {p["alias"] for p in _json("providers", "--json")["providers"]}


def test_quantize_dynamic_without_data(tmp_path: Path) -> None:
    document = _json("quantize", TRANSFORMER, "-o", tmp_path / "t.onnx", "--json")
    assert document["mode"] == "dynamic" and document["calibration"] is None


def test_validate_and_its_report(quantized: Path, tmp_path: Path) -> None:
    report = tmp_path / "validate.json"
    document = _json("validate", CNN, quantized, "--data", EVAL, "--labels", "labels", "--samples", 64,
                     "--max-drop", 1, "--min-cosine", 0.99, "--report", report, "--json")
    assert document["passed"] and document["accuracy"] is not None
    assert json.loads(report.read_text()) == document


def test_validate_gate_missed_prints_the_result_not_an_error(quantized: Path) -> None:
    document = _json("validate", CNN, quantized, "--data", EVAL, "--labels", "labels", "--samples", 16,
                     "--min-sqnr", 200, "--json", code=3)
    assert document["command"] == "validate" and document["passed"] is False


def test_benchmark(quantized: Path) -> None:
    document = _json("benchmark", CNN, quantized, "--runs", 5, "--min-speedup", 0.01, "--json")
    assert [m["runs"] for m in document["models"]] == [5, 5]


def test_analyze(quantized: Path) -> None:
    document = _json("analyze", CNN, quantized, "--data", EVAL, "--labels", "labels", "--samples", 4, "--json")
    assert document["nodes"]


def test_pipeline_with_every_step(tmp_path: Path) -> None:
    report = tmp_path / "pipeline.json"
    document = _json("quantize", CNN, "-o", tmp_path / "q.onnx", "--calib", CALIB, "--calib-samples", 16,
                     "--validate", EVAL, "--labels", "labels", "--max-drop", 1, "--benchmark", "--runs", 5,
                     "--analyze", "--report", report, "--json")
    assert document["command"] == "pipeline"
    assert [len(document[k]) for k in ("validate", "benchmark")] == [1, 1] and document["analyze"] is not None
    assert json.loads(report.read_text()) == document


def test_pipeline_with_the_accuracy_search(tmp_path: Path) -> None:
    document = _json("quantize", CNN, "-o", tmp_path / "q.onnx", "--calib", CALIB, "--calib-samples", 16,
                     "--eval-data", EVAL, "--labels", "labels", "--eval-samples", 16, "--min-cosine", 0.999999,
                     "--max-trials", 3, "--json", code=3)
    assert document["search"]["trials"]


def test_batch_of_two_models_and_a_broken_one(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    report = tmp_path / "batch.json"
    document = _json("quantize", broken, CNN, TRANSFORMER, "-o", tmp_path / "out", "--calib", CALIB,
                     "--calib-samples", 8, "--validate", EVAL, "--labels", "labels", "--jobs", 2,
                     "--report", report, "--json", code=2)
    assert [m["status"] for m in document["models"]] == ["failed", "passed", "passed"]
    assert document["models"][1]["result"]["command"] == "pipeline"
    assert json.loads(report.read_text()) == document


def test_convert(tmp_path: Path) -> None:
    document = _json("convert", CNN, "-o", tmp_path / "cnn.fp16.onnx", "--calib", CALIB, "--calib-samples", 8,
                     "--keep-float", "Softmax", "--json")
    assert document["command"] == "convert" and document["range_checked"] is True


def test_error_object() -> None:
    document = _json("inspect", SAMPLES / "missing.onnx", "--json", code=2)
    assert document["error"] == "ModelError" and document["exit_code"] == 2


@pytest.mark.parametrize("change", [
    lambda d: d.update(unknown_field=1),
    lambda d: d.update(schema_version=SCHEMA_VERSION + 1),
    lambda d: d.update(command="quantise"),
    lambda d: d.pop("file_bytes"),
    lambda d: d["inputs"][0].update(layout="NCHW"),
], ids=["unknown field", "other version", "unknown command", "missing field", "unknown nested field"])
def test_the_schema_notices_drift(change: Any) -> None:
    document = _json("inspect", CNN, "--json")
    change(document)
    assert list(VALIDATOR.iter_errors(document))
