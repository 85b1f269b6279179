"""`validate` and `benchmark` from the command line: exit codes, gates and clean JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests import models
from tests.conftest import SAMPLES

runner = CliRunner()


def _run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_validate_passes_and_prints_one_json_document(mlp: Path, mlp_calib: Path) -> None:
    code, out, _ = _run("validate", mlp, mlp, "--data", mlp_calib, "--min-cosine", "0.99", "--json")
    assert code == ExitCode.OK
    report = json.loads(out)
    assert report["command"] == "validate" and report["passed"] is True and report["samples"] == 16


def test_validate_gate_failure_exits_3_with_the_result_on_stdout(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    scaled = models.save(models.mlp_variant("scaled"), tmp_path / "scaled.onnx")
    code, out, err = _run("validate", mlp, scaled, "--data", mlp_calib, "--min-sqnr", "30", "--json")
    assert code == ExitCode.GATE_FAILED
    report = json.loads(out)  # exactly one JSON document: the result, not an error object too
    assert report["passed"] is False and report["gates"][0]["name"] == "min_sqnr"
    assert "gate" in err and "min_sqnr (y)" in err


def test_validate_table_on_the_sample_model(tmp_path: Path) -> None:
    quant = tmp_path / "q.onnx"
    assert _run("quantize", SAMPLES / "digits_cnn.onnx", "-o", quant, "--calib", SAMPLES / "digits.calib.npz")[0] == 0
    code, out, _ = _run("validate", SAMPLES / "digits_cnn.onnx", quant, "--data", SAMPLES / "digits.eval.npz",
                        "--labels", "labels", "--max-drop", "1")
    assert code == ExitCode.OK
    assert "top-1 accuracy: FP32 99.44%" in out and "gate pass" in out


def test_validate_bad_input_is_exit_2(mlp: Path, cnn: Path, mlp_calib: Path) -> None:
    code, _, err = _run("validate", mlp, cnn, "--data", mlp_calib)
    assert code == ExitCode.BAD_INPUT and "signatures differ" in err and "Traceback" not in err
    code, _, err = _run("validate", mlp, mlp, "--data", mlp_calib, "--max-drop", "1")
    assert code == ExitCode.BAD_INPUT and "--labels" in err


def test_benchmark_json_and_speedup_gate(mlp: Path) -> None:
    code, out, _ = _run("benchmark", mlp, mlp, "--runs", "3", "--warmup", "0", "--json")
    assert code == ExitCode.OK
    report = json.loads(out)
    assert report["command"] == "benchmark" and [m["runs"] for m in report["models"]] == [3, 3]
    assert report["models"][0]["speedup_vs_first"] == 1.0
    code, out, _ = _run("benchmark", mlp, mlp, "--runs", "3", "--min-speedup", "1000", "--json")
    assert code == ExitCode.GATE_FAILED and json.loads(out)["passed"] is False


def test_benchmark_table_with_batch_and_shape(cnn: Path) -> None:
    code, out, _ = _run("benchmark", cnn, "--runs", "2", "--batch", "4")
    assert code == ExitCode.OK and "batch of 4" in out


def test_benchmark_unknown_provider_is_an_environment_error(mlp: Path) -> None:
    code, _, err = _run("benchmark", mlp, "--ep", "no-such-provider", "--runs", "1")
    assert code == ExitCode.ENVIRONMENT and "CPUExecutionProvider" in err


def test_quantize_validate_benchmark_writes_one_report(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "q.onnx", tmp_path / "report.json"
    code, stdout, _ = _run("quantize", cnn, "-o", out, "--calib", cnn_calib, "--validate", cnn_calib,
                           "--min-cosine", "0.99", "--benchmark", "--runs", "3", "--report", report, "--json")
    assert code == ExitCode.OK
    printed, written = json.loads(stdout), json.loads(report.read_text())
    assert printed == written
    assert written["command"] == "pipeline" and written["passed"] is True
    assert written["quantize"]["output"] == str(out)
    assert written["validate"][0]["samples"] == 16 and written["validate"][0]["gates"][0]["passed"] is True
    assert [m["path"] for m in written["benchmark"][0]["models"]] == [str(cnn), str(out)]


def test_pipeline_gate_failure_keeps_the_model_and_the_report(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "q.onnx", tmp_path / "report.json"
    code, _, err = _run("quantize", cnn, "-o", out, "--calib", cnn_calib, "--validate", cnn_calib,
                        "--min-sqnr", "500", "--report", report)
    assert code == ExitCode.GATE_FAILED and "min_sqnr" in err
    assert out.exists() and json.loads(report.read_text())["passed"] is False


def test_pipeline_options_need_their_step(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    code, _, err = _run("quantize", cnn, "-o", tmp_path / "q.onnx", "--calib", cnn_calib, "--min-cosine", "0.9")
    assert code == ExitCode.BAD_INPUT and "--validate" in err
    code, _, err = _run("quantize", cnn, "-o", tmp_path / "q.onnx", "--calib", cnn_calib, "--runs", "3")
    assert code == ExitCode.BAD_INPUT and "--benchmark" in err
    assert not (tmp_path / "q.onnx").exists()
