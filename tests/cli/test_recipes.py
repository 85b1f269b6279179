"""Recipes: every option has a key, `--save-recipe` writes what `qconvert run` replays, bad recipes
are one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from qconvert.cli import recipe
from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests.conftest import SAMPLES

runner = CliRunner()
ROOT = typer.main.get_command(app)
COMMANDS = ["quantize", "validate", "benchmark", "analyze"]


def _context(command: str | None = None) -> Any:
    """A click context for the root (and `command`), as the commands see it."""
    root = ROOT.make_context("qconvert", [command or "quantize"], resilient_parsing=True)
    return root


def _sample_value(param: Any) -> Any:
    """A valid recipe value for any parameter, of the kind the recipe must hold."""
    kind = param.type.name
    if getattr(param, "is_flag", False):
        return True
    if kind == "choice":
        value: Any = param.type.choices[-1]
    elif kind in ("integer", "integer range"):
        value = max(3, getattr(param.type, "min", None) or 0)
    elif kind in ("float", "float range"):
        value = 0.5
    else:
        value = "x.onnx"
    return [value, value] if param.multiple or param.nargs == -1 else value


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_recipe_key_that_reaches_it(command: str, tmp_path: Path) -> None:
    ctx = _context(command)
    cmd = ROOT.commands[command]
    params = {p.name: p for p in [*ROOT.params, *cmd.params] if p.name not in recipe._NOT_RECIPE}
    keys = recipe.keys(ctx, command)
    assert {recipe._key(p) for p in params.values()} <= keys
    written = {"recipe": 1, "command": command, **{recipe._key(p): _sample_value(p) for p in params.values()}}
    argv = recipe.to_argv(ctx, written, tmp_path, [])
    root = ROOT.make_context("qconvert", argv, resilient_parsing=True)
    sub = cmd.make_context(command, argv[argv.index(command) + 1:], parent=root, resilient_parsing=True)
    for name, param in params.items():
        scope = root if param in ROOT.params else sub
        assert scope.get_parameter_source(name).name == "COMMANDLINE", f"{command}: {name} did not reach its option"


def test_false_flags_and_repeated_options_round_trip(tmp_path: Path) -> None:
    ctx = _context()
    argv = recipe.to_argv(ctx, {"command": "quantize", "model": "m.onnx", "output": "q.onnx", "per-channel": False,
                                "benchmark": False, "ep": ["cpu", "openvino"], "preset": "cpu-avx2"}, tmp_path, [])
    assert argv == ["quantize", "--output", str(tmp_path / "q.onnx"), "--preset", "cpu-avx2", "--per-tensor",
                    "--ep", "cpu", "--ep", "openvino", "--", str(tmp_path / "m.onnx")]


def test_paths_are_relative_to_the_recipe_folder(tmp_path: Path) -> None:
    argv = recipe.to_argv(_context(), {"command": "quantize", "model": "m.onnx", "output": "/abs/q.onnx",
                                       "calib": "synthetic", "validate": "plugins/data.py:samples",
                                       "eval-data": "pkg.module:samples"}, tmp_path, [])
    assert argv[argv.index("--output") + 1] == "/abs/q.onnx"
    assert argv[argv.index("--calib") + 1] == "synthetic"
    assert argv[argv.index("--validate") + 1] == f"{tmp_path / 'plugins/data.py'}:samples"
    assert argv[argv.index("--eval-data") + 1] == "pkg.module:samples"
    assert argv[-1] == str(tmp_path / "m.onnx")


def test_a_saved_recipe_replays_the_command_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    model = SAMPLES / "digits_cnn.onnx"
    args = ["quantize", str(model), "-o", "q.onnx", "--calib", str(SAMPLES / "digits.calib.npz"),
            "--calib-samples", "16", "--per-tensor", "--exclude-op-types", "Gemm", "--save-recipe", "jobs/r.toml"]
    (work / "jobs").mkdir()
    first = runner.invoke(app, args)
    assert first.exit_code == ExitCode.OK, first.stderr
    saved = (work / "jobs" / "r.toml").read_text()
    assert 'output = "../q.onnx"' in saved and "per-channel = false" in saved and "save-recipe" not in saved
    assert 'exclude-op-types = [\n    "Gemm",\n]' in saved and f'model = [\n    "{model}",\n]' in saved
    reference = (work / "q.onnx").read_bytes()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = runner.invoke(app, ["run", str(work / "jobs" / "r.toml"), "--force", "--json"])
    assert again.exit_code == ExitCode.OK, again.stderr
    assert json.loads(again.stdout)["output"] == str(work / "jobs" / ".." / "q.onnx")
    assert (work / "q.onnx").read_bytes() == reference
    assert "running: qconvert quantize" in again.stderr


@pytest.mark.parametrize(("text", "message"), [
    ('command = "quantize"\nmodle = "m.onnx"\n', "unknown recipe key(s) for quantize: modle"),
    ('command = "quantize"\nmodel = "m.onnx"\noutput = "q.onnx"\nbenchmark = "yes"\n',
     "recipe key benchmark: expected true or false"),
    ('command = "quantize"\nmodel = "m.onnx"\noutput = ["a.onnx", "b.onnx"]\n', "recipe key output: expected a single"),
    ('command = "quantize"\nmodel = "m.onnx"\noutput = "q.onnx"\nruns = "many"\nbenchmark = true\n',
     "Invalid value for '--runs'"),
    ('model = "m.onnx"\n', "the recipe's `command` must be one of"),
    ('command = "inspect"\n', "the recipe's `command` must be one of"),
    ('recipe = 7\ncommand = "quantize"\n', "recipe version 7"),
    ('command = "quantize"\n[model\n', "is not valid TOML"),
    ('command = "quantize"\n[calib]\nsource = "x"\n', "recipe key calib: expected a single value"),
])
def test_a_bad_recipe_is_one_clear_error_and_writes_nothing(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    before = sorted(tmp_path.iterdir())
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(tmp_path.iterdir()) == before


def test_a_missing_recipe_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "none.toml")])
    assert result.exit_code == ExitCode.BAD_INPUT and "--save-recipe" in result.stderr


def test_recipe_exit_codes_are_the_commands(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(f'command = "validate"\nfp32-model = "{SAMPLES / "digits_cnn.onnx"}"\n'
                    f'quantized-model = "{SAMPLES / "digits_transformer.onnx"}"\n'
                    f'data = "{SAMPLES / "digits.eval.npz"}"\nlabels = "labels"\nsamples = 4\nmin-cosine = 0.999\n')
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == ExitCode.GATE_FAILED, result.stderr
