"""The command line: exit codes, stdout/stderr separation, JSON, and the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from qconvert.results import SCHEMA_VERSION
from tests import models

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_inspect_json_describes_the_model(tmp_path: Path) -> None:
    src = models.save(models.with_if_subgraph(), tmp_path / "if.onnx")
    code, out, _ = _run("inspect", src, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["schema_version"] == SCHEMA_VERSION and info["command"] == "inspect"
    assert info["opsets"] == {"ai.onnx": 17} and info["ir_version"] == 8
    assert info["producer"] == "qconvert-tests"
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}]
    assert info["op_types"]["MatMul"] == 3, "subgraph nodes are counted"
    assert info["subgraph_nodes"] == 2
    assert info["parameters"]["float"] == {"count": 3 * 256 + 1, "bytes": (3 * 256 + 1) * 4}
    assert info["candidates"]["dynamic"]["MatMul"] == 3
    assert info["quantized"] is None and info["external_data"] is False


def test_inspect_reports_quantized_and_external(tmp_path: Path) -> None:
    src = models.save(models.mlp(hidden=256), tmp_path / "m.onnx", external=True)
    code, out, _ = _run("inspect", src, "--json")
    assert code == 0 and json.loads(out)["external_data"] is True
    assert _run("quantize", src, "-o", tmp_path / "q.onnx")[0] == 0
    info = json.loads(_run("inspect", tmp_path / "q.onnx", "--json")[1])
    assert info["quantized"] == "integer" and info["quantization_nodes"]["integer"] >= 2


def test_inspect_table_for_people(cnn: Path) -> None:
    code, out, _ = _run("inspect", cnn)
    assert code == 0
    for text in ("IR 8", "ai.onnx 17", "Conv", "[batch, 3, 16, 16]", "already quantized: no"):
        assert text in out


def test_quantize_static_json_summary(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "q.onnx"
    code, out, err = _run("quantize", cnn, "-o", out_path, "--calib", cnn_calib, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["mode"] == "static" and summary["mode_reason"] == "calibration data given"
    assert summary["op_types"]["Conv"] == {"candidates": 2, "quantized": 2}
    assert summary["calibration"]["kind"] == "npz" and summary["calibration"]["samples"] == 16
    assert summary["config"]["activations"] == "uint8" and summary["config"]["weights"] == "int8"
    assert summary["config"]["per_channel"] is True
    assert summary["size"]["after_bytes"] == out_path.stat().st_size
    assert set(summary["time_seconds"]) == {"prepare", "calibration", "quantization"}
    assert summary["versions"]["onnxruntime"]


def test_quantize_table_says_which_mode(mlp: Path, tmp_path: Path) -> None:
    code, out, _ = _run("quantize", mlp, "-o", tmp_path / "q.onnx")
    assert code == 0
    assert "mode: dynamic (no calibration data given)" in out
    assert "2 of 2 candidate nodes quantized" in out


def test_synthetic_is_flagged_as_smoke_run(mlp: Path, tmp_path: Path) -> None:
    code, out, err = _run("quantize", mlp, "-o", tmp_path / "q.onnx", "--calib", "synthetic", "--json")
    assert code == 0
    assert json.loads(out)["smoke_run"] is True
    assert "smoke run" in err


def test_options_reach_the_config(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    code, out, err = _run("quantize", cnn, "-o", tmp_path / "q.onnx", "--calib", cnn_calib, "--json",
                          "--activations", "int8", "--per-tensor", "--reduce-range", "--method", "percentile",
                          "--percentile", "99.9", "--exclude-nodes", "conv1", "--op-types", "Conv,MatMul",
                          "--op-types", "Gemm", "--calib-samples", "3", "--symmetric-activations")
    assert code == 0, err
    summary = json.loads(out)
    cfg = summary["config"]
    assert cfg["activations"] == "int8" and cfg["per_channel"] is False and cfg["reduce_range"] is True
    assert cfg["method"] == "percentile" and cfg["percentile"] == 99.9 and cfg["symmetric_activations"] is True
    assert cfg["op_types"] == ["Conv", "MatMul", "Gemm"] and cfg["exclude_nodes"] == ["conv1"]
    assert summary["calibration"]["samples"] == 3
    assert {"name": "conv1", "op_type": "Conv", "graph": "main",
            "reason": "excluded by --exclude-nodes conv1"} in summary["skipped"]


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "{tmp}/missing.onnx"], "model not found"),
    (["quantize", "{tmp}/missing.onnx", "-o", "{tmp}/q.onnx"], "model not found"),
    (["quantize", "{mlp}", "-o", "{tmp}/q.onnx", "--calib", "{tmp}/nope.npz"], "calibration data not found"),
    (["quantize", "{mlp}", "-o", "{tmp}/q.onnx", "--mode", "static"], "needs calibration data"),
    (["quantize", "{mlp}", "-o", "{mlp}", "--force"], "is the input"),
    (["quantize", "{mlp}", "-o", "{tmp}/q.onnx", "--calib", "synthetic", "--shape", "x"], "expected NAME="),
    (["quantize", "{mlp}", "-o", "{tmp}/q.onnx", "--calib", "synthetic", "--shape", "x=1,2,3"], "rank"),
    (["quantize", "{mlp}", "-o", "{tmp}/no/such/dir/q.onnx"], "output folder does not exist"),
])
def test_bad_input_is_one_clear_line_and_exit_2(mlp: Path, tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.format(tmp=tmp_path, mlp=mlp) for a in args]
    before = mlp.read_bytes()
    code, out, err = _run(*argv)
    assert code == ExitCode.BAD_INPUT
    assert message in err and "Traceback" not in err + out
    assert err.splitlines()[0].startswith("error:")
    assert out == ""
    assert mlp.read_bytes() == before
    assert not (tmp_path / "q.onnx").exists()


def test_data_mismatch_lists_every_problem(mlp: Path, tmp_path: Path) -> None:
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 15), np.float64), extra=np.zeros(4))
    code, _, err = _run("quantize", mlp, "-o", tmp_path / "q.onnx", "--calib", bad)
    assert code == ExitCode.BAD_INPUT
    assert "unexpected input 'extra'" in err and "dtype float64" in err and "dim 1 is 15" in err


def test_garbage_model_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00definitely not protobuf" * 10)
    code, out, err = _run("inspect", bad, "--json")
    assert code == ExitCode.BAD_INPUT and "Traceback" not in err
    assert json.loads(out)["exit_code"] == 2, "with --json the error is JSON on stdout too"
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, _, err = _run("inspect", empty)
    assert code == ExitCode.BAD_INPUT and "empty" in err


def test_nothing_quantized_is_an_error_with_reasons(tmp_path: Path) -> None:
    src = models.save(models.no_quantizable_ops(), tmp_path / "n.onnx")
    code, _, err = _run("quantize", src, "-o", tmp_path / "q.onnx")
    assert code == ExitCode.BAD_INPUT and "nothing to quantize" in err
    assert "no node of a quantizable op type" in err
    assert not (tmp_path / "q.onnx").exists()


def test_existing_output_needs_force(mlp: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "q.onnx"
    out_path.write_bytes(b"old")
    code, _, err = _run("quantize", mlp, "-o", out_path)
    assert code == ExitCode.BAD_INPUT and "--force" in err and out_path.read_bytes() == b"old"
    assert _run("quantize", mlp, "-o", out_path, "--force")[0] == 0
    assert onnx.load(str(out_path)).graph.node


def test_internal_errors_are_exit_1_without_traceback(mlp: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import qconvert

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(qconvert, "describe", boom)
    code, _, err = _run("inspect", mlp)
    assert code == ExitCode.INTERNAL and "kaboom" in err and "--debug" in err and "Traceback" not in err


def test_help_lists_commands() -> None:
    code, out, _ = _run("--help")
    assert code == 0 and "inspect" in out and "quantize" in out


def test_installed_entry_point_runs(mlp: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("qconvert")
    proc = subprocess.run([str(exe), "quantize", str(mlp), "-o", str(tmp_path / "q.onnx"), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nodes"]["quantized"] == 2
    proc = subprocess.run([str(exe), "inspect", str(tmp_path / "missing.onnx")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and "model not found" in proc.stderr


def test_caffe2_export_as_shipped_quantizes(tmp_path: Path) -> None:
    """onnx's light SqueezeNet exactly as the wheel ships it: IR 3, opset 9, initializers as
    inputs, weights from ConstantOfShape nodes."""
    out = tmp_path / "q.onnx"
    source = models.LEGACY_ZOO / "light_squeezenet.onnx"
    before = source.read_bytes()
    code, stdout, stderr = _run("quantize", source, "-o", out, "--mode", "dynamic", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["op_types"]["Conv"] == {"quantized": 26, "candidates": 26}
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"ConvInteger", "DynamicQuantizeLinear"}
    assert source.read_bytes() == before


def test_fix_shape_makes_the_output_static(cnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    code, stdout, stderr = _run("quantize", cnn, "-o", out, "--calib", "synthetic", "--fix-shape", "x=2,3,16,16",
                                "--json")
    assert code == 0, stderr
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 16]
    passes = {p["name"]: p for p in json.loads(stdout)["preprocess"]["passes"]}
    assert passes["fix-input-shapes"]["changed"] == 1
    assert json.loads(stdout)["config"]["fixed_shapes"] == {"x": [2, 3, 16, 16]}


@pytest.mark.parametrize(("spec", "message"), [("y=1,3,16,16", "no input 'y'"), ("x=1,3,16", "Rank mismatch"),
                                              ("x=1,4,16,16", "Can't replace")])
def test_fix_shape_refuses_what_cannot_be(cnn: Path, tmp_path: Path, spec: str, message: str) -> None:
    code, _, stderr = _run("quantize", cnn, "-o", tmp_path / "q.onnx", "--mode", "dynamic", "--fix-shape", spec)
    assert code == ExitCode.BAD_INPUT and message in stderr and not (tmp_path / "q.onnx").exists()


def test_names_from_a_model_never_reach_the_terminal_as_escape_sequences(tmp_path: Path) -> None:
    model = models.mlp()
    hostile = "x\x1b[31m\x1b]0;owned\x07\u202e[bold]"
    model.graph.input[0].name = hostile
    model.graph.node[0].input[0] = hostile
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\u202e" not in result.stdout
    assert "x\\x1b[31m\\x1b]0;owned\\x07\\u202e[bold]" in result.stdout  # shown, escaped, not read as markup
