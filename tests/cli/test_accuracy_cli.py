"""`analyze`, the accuracy search and presets from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests.conftest import SAMPLES

runner = CliRunner()


def _run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_analyze_json_ranks_the_culprit_first(outlier: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    quant = tmp_path / "q.onnx"
    assert _run("quantize", model, "-o", quant, "--calib", calib)[0] == ExitCode.OK
    code, out, _ = _run("analyze", model, quant, "--data", evaluation, "--samples", "8", "--json")
    assert code == ExitCode.OK
    report = json.loads(out)
    assert report["command"] == "analyze" and report["samples"] == 8
    assert report["nodes"][0]["node"] == "mm1" and report["nodes"][0]["own_sqnr_db"] < 10
    code, out, _ = _run("analyze", model, quant, "--data", evaluation, "--top", "2")
    assert code == ExitCode.OK and "mm1" in out and "worst first" in out


def test_analyze_refuses_a_model_against_an_unrelated_one(outlier: tuple[Path, Path, Path], mlp: Path) -> None:
    model, _, evaluation = outlier
    code, out, err = _run("analyze", mlp, model, "--data", evaluation)
    assert code == ExitCode.BAD_INPUT and out == "" and "Traceback" not in err


def test_quantize_searches_until_the_target_is_met(outlier: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    out_path = tmp_path / "q.onnx"
    code, out, err = _run("quantize", model, "-o", out_path, "--calib", calib, "--eval-data", evaluation,
                          "--min-cosine", "0.999", "--json")
    assert code == ExitCode.OK, err
    report = json.loads(out)
    search = report["search"]
    assert search["met"] is True and [k["node"] for k in search["sensitive_nodes"]] == ["mm1", "mm0"]
    assert report["validate"][0]["passed"] is True and report["validate"][0]["quantized"] == str(out_path)
    assert "trial 0:" in err and "trial 1:" in err  # progress on stderr, the result on stdout


def test_a_missed_search_target_exits_3_with_the_closest_model(outlier: tuple[Path, Path, Path],
                                                               tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    out_path = tmp_path / "q.onnx"
    code, out, err = _run("quantize", model, "-o", out_path, "--calib", calib, "--eval-data", evaluation,
                          "--min-sqnr", "200", "--max-trials", "3")
    assert code == ExitCode.GATE_FAILED and out_path.exists()
    assert "did not reach the target" in err and "accuracy search:" in out


def test_preset_is_printed_and_recorded(tmp_path: Path) -> None:
    code, out, err = _run("quantize", SAMPLES / "digits_transformer.onnx", "-o", tmp_path / "q.onnx",
                          "--preset", "cpu-avx2", "--preset", "transformer", "--per-tensor", "--json")
    assert code == ExitCode.OK
    config = json.loads(out)["config"]
    assert config["presets"] == ["cpu-avx2", "transformer"] and config["reduce_range"] is True
    assert config["op_types"] == ["MatMul", "Gemm"] and config["per_channel"] is False
    assert "preset cpu-avx2 (target)" in err and "given explicitly, over the preset(s): per_channel" in err


def test_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _run("quantize", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "q.onnx", "--preset", "tpu")
    assert code == ExitCode.BAD_INPUT and "unknown preset 'tpu'" in err and "cpu-vnni" in err
    assert not (tmp_path / "q.onnx").exists()


def test_gates_without_evaluation_data_say_which_flags_give_it(tmp_path: Path) -> None:
    code, _, err = _run("quantize", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "q.onnx", "--min-cosine", "0.99")
    assert code == ExitCode.BAD_INPUT and "--eval-data" in err
