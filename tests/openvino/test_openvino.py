"""The OpenVINO execution provider for real (`make test-openvino`: its own environment, because
onnxruntime-openvino replaces the onnxruntime package). Skipped where it is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests.conftest import SAMPLES

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif("OpenVINOExecutionProvider" not in ort.get_available_providers(),
                                reason="onnxruntime-openvino is not installed (make test-openvino)")
runner = CliRunner()
CNN = SAMPLES / "digits_cnn.onnx"
ON_CPU = ("--ep", "openvino", "--ep-option", "device_type=CPU")


def _run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "cnn.int8.onnx"
    code, _, err = _run("quantize", CNN, "-o", out, "--calib", SAMPLES / "digits.calib.npz", "--calib-samples", "64")
    assert code == ExitCode.OK, err
    return out


def test_openvino_is_listed_with_its_devices() -> None:
    code, out, _ = _run("providers", "--json")
    assert code == ExitCode.OK
    listed = {p["alias"]: p for p in json.loads(out)["providers"]}
    assert listed["openvino"]["name"] == "OpenVINOExecutionProvider"
    assert listed["openvino"]["source"].startswith("onnxruntime-openvino ")
    assert "CPU" in listed["openvino"]["devices"]


def test_benchmark_on_openvino_reports_its_placement(quantized: Path) -> None:
    code, out, err = _run("benchmark", CNN, quantized, *ON_CPU, "--runs", "20", "--json")
    assert code == ExitCode.OK, err
    report = json.loads(out)
    assert report["provider"] == "OpenVINOExecutionProvider" and report["fell_back_to_cpu"] == []
    fp32, quant = (m["placement"] for m in report["models"])
    assert fp32["share"] == 1.0 and quant["share"] == 1.0
    assert quant["quantized_nodes"] == quant["quantized_on_provider"] > 0
    assert report["models"][1]["speedup_vs_first"] > 0


def test_validate_on_openvino_keeps_the_accuracy(quantized: Path) -> None:
    code, out, err = _run("validate", CNN, quantized, "--data", SAMPLES / "digits.eval.npz", "--labels", "labels",
                          "--max-drop", "1", "--min-cosine", "0.999", *ON_CPU, "--json")
    assert code == ExitCode.OK, err
    report = json.loads(out)
    assert report["passed"] and report["placement"]["share"] == 1.0


def test_a_device_openvino_does_not_have_is_a_total_fallback(quantized: Path) -> None:
    """OpenVINO takes nothing on a device it lacks and onnxruntime runs it all on the CPU provider
    without a word; qconvert must not report that as an OpenVINO figure."""
    code, out, err = _run("benchmark", quantized, "--ep", "openvino", "--ep-option", "device_type=NPU", "--runs", "2",
                          "--json")
    assert code == ExitCode.GATE_FAILED
    assert json.loads(out)["fell_back_to_cpu"] == [str(quantized)]
    assert "took none of its" in err and "CPU figures" in err
