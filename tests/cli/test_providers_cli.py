"""`qconvert providers`, and `--ep` on a real plugin provider (QNN, when installed) from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests.conftest import SAMPLES
from tests.unit.test_providers import needs_qnn

runner = CliRunner()
CNN = SAMPLES / "digits_cnn.onnx"


def _run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_providers_json_lists_the_cpu_provider() -> None:
    code, out, _ = _run("providers", "--json")
    assert code == ExitCode.OK
    listed = {p["alias"]: p for p in json.loads(out)["providers"]}
    assert listed["cpu"]["name"] == "CPUExecutionProvider" and listed["cpu"]["devices"]


def test_providers_table() -> None:
    code, out, _ = _run("providers")
    assert code == ExitCode.OK and "CPUExecutionProvider" in out and "alias" in out


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample CNN quantized twice: QNN-ready (batch fixed to 1, every output quantized: HTP runs
    whole Q/DQ node units only) and left dynamic."""
    folder = tmp_path_factory.mktemp("ep")
    made = {"static": folder / "static.onnx", "dynamic": folder / "dynamic.onnx"}
    for kind, path in made.items():
        fix = ["--fix-shape", "image=1,1,32,32", "--quantize-all-outputs"] if kind == "static" else []
        code, _, err = _run("quantize", CNN, "-o", path, "--calib", SAMPLES / "digits.calib.npz",
                            "--calib-samples", "32", *fix)
        assert code == ExitCode.OK, err
    return made


@needs_qnn
def test_validate_on_qnn_reports_accuracy_and_placement(quantized: dict[str, Path]) -> None:
    code, out, err = _run("validate", CNN, quantized["static"], "--data", SAMPLES / "digits.eval.npz",
                          "--samples", "30", "--labels", "labels", "--max-drop", "3.4", "--min-cosine", "0.999",
                          "--ep", "qnn", "--json")
    assert code == ExitCode.OK, err
    report = json.loads(out)
    assert report["ep"]["provider"] == "qnn" and report["passed"]
    assert report["placement"]["share"] > 0.9 and not report["placement"]["all_on_cpu"]


@needs_qnn
def test_benchmark_on_qnn_says_loudly_that_everything_fell_back(quantized: dict[str, Path]) -> None:
    code, out, err = _run("benchmark", quantized["dynamic"], "--ep", "qnn", "--runs", "2", "--json")
    assert code == ExitCode.GATE_FAILED
    report = json.loads(out)
    assert report["fell_back_to_cpu"] == [str(quantized["dynamic"])]
    assert report["models"][0]["placement"]["all_on_cpu"] is True
    assert "took none of its" in err and "--fix-shape" in err and "Traceback" not in err


@needs_qnn
def test_pipeline_fixes_the_shape_and_runs_on_qnn(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    code, _, err = _run("quantize", CNN, "-o", tmp_path / "q.onnx", "--calib", SAMPLES / "digits.calib.npz",
                        "--calib-samples", "32", "--fix-shape", "image=1,1,32,32", "--ep", "qnn",
                        "--benchmark", "--runs", "3", "--report", report)
    assert code == ExitCode.OK, err
    bench = json.loads(report.read_text())["benchmark"][0]
    fp32, quant = bench["models"]
    assert fp32["placement"]["all_on_cpu"] and quant["placement"]["share"] > 0.9
    assert "every output quantized" in err  # --ep qnn keeps the node units HTP needs whole
