"""Progress bars on stderr: drawn only on a terminal, never on stdout, and never with --quiet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console  # noqa: TID251 - a test console that plays a terminal, for render.err
from typer.testing import CliRunner

from qconvert.cli import render
from qconvert.cli.app import app
from qconvert.errors import ExitCode

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr as a terminal: the console the bars draw on, forced to behave like one."""
    monkeypatch.setattr(render, "err", Console(stderr=True, soft_wrap=True, force_terminal=True))


def _run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _pipeline(model: Path, calib: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return _run(*extra, "quantize", model, "-o", out, "--calib", calib, "--validate", calib, "--benchmark",
                "--runs", "3", "--json")


def test_no_bars_when_stderr_is_not_a_terminal(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    code, out, err = _pipeline(mlp, mlp_calib, tmp_path / "q.onnx")
    assert code == ExitCode.OK, err
    assert json.loads(out)["command"] == "pipeline"
    assert err == ""


def test_bars_on_a_terminal_go_to_stderr_and_leave_stdout_pure_json(terminal: None, mlp: Path, mlp_calib: Path,
                                                                    tmp_path: Path) -> None:
    code, out, err = _pipeline(mlp, mlp_calib, tmp_path / "q.onnx")
    assert code == ExitCode.OK, err
    assert json.loads(out)["command"] == "pipeline" and "\x1b" not in out and "━" not in out
    shown = ANSI.sub("", err)
    for task, total in (("calibration", 16), ("validation", 16), ("benchmark", 3)):  # a bar: name, bar, count
        assert re.search(rf"{task} ━+ +0/{total} ", shown), shown


def test_quiet_silences_bars_warnings_and_presets_even_on_a_terminal(terminal: None, mlp: Path,
                                                                     tmp_path: Path) -> None:
    args = ("quantize", mlp, "-o", tmp_path / "q.onnx", "--calib", "synthetic", "--preset", "cpu-vnni", "--force")
    code, _, err = _run(*args)
    assert code == ExitCode.OK and "warning:" in err and "preset cpu-vnni" in err and "calibration" in err
    code, quiet_out, quiet_err = _run("--quiet", *args)
    assert code == ExitCode.OK and quiet_err == ""
    assert "mode: static" in quiet_out  # the result itself is unchanged


def test_quiet_still_prints_errors(terminal: None, tmp_path: Path) -> None:
    code, out, err = _run("-q", "quantize", tmp_path / "missing.onnx", "-o", tmp_path / "q.onnx", "--json")
    assert code == ExitCode.BAD_INPUT
    assert "error:" in err and json.loads(out)["exit_code"] == ExitCode.BAD_INPUT


def test_a_recipe_run_by_a_quiet_command_is_quiet(terminal: None, mlp: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "job.toml"
    code, _, err = _run("quantize", mlp, "-o", tmp_path / "q.onnx", "--calib", "synthetic", "--save-recipe", recipe)
    assert code == ExitCode.OK and "warning:" in err
    code, out, err = _run("-q", "run", recipe, "--force")
    assert code == ExitCode.OK and err == "" and "mode: static" in out
