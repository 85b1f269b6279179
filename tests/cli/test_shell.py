"""The installed `qconvert` in a shell: `--json | jq` works for every command (stdout holds one JSON
document and nothing else), and Typer's shell completion is installed and really completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLES

EXE = Path(sys.executable).with_name("qconvert")
JQ = shutil.which("jq")
BASH = shutil.which("bash")
CNN = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits.calib.npz"
EVAL = SAMPLES / "digits.eval.npz"


def _run(*args: object, code: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)
    assert proc.returncode == code, proc.stderr
    return proc


def _document(*args: object, code: int = 0, jq: str = ".schema_version") -> dict[str, Any]:
    """Run a command with --json: stdout must be exactly one JSON document, which `jq -e` reads."""
    proc = _run(*args, "--json", code=code)
    document: dict[str, Any] = json.loads(proc.stdout)  # raises on anything before or after the document
    if JQ is not None:
        piped = subprocess.run([JQ, "-e", jq], input=proc.stdout, capture_output=True, text=True, check=False)
        assert piped.returncode == 0, f"jq -e {jq}: {piped.stdout}{piped.stderr}"
        assert json.loads(piped.stdout) == document[jq.lstrip(".")]
    return document


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shell") / "cnn.int8.onnx"
    document = _document("quantize", CNN, "-o", out, "--calib", CALIB, "--calib-samples", 16)
    assert document["command"] == "quantize" and out.is_file()
    return out


def test_entry_point_is_installed() -> None:
    assert EXE.is_file(), f"no console script beside {sys.executable}: pip install -e ."


def test_quantize(quantized: Path) -> None:
    assert quantized.stat().st_size > 0


COMMANDS = {  # the arguments each command runs with, besides --json ({quantized}: the fixture's model)
    "inspect": [CNN],
    "providers": [],
    "validate": [CNN, "{quantized}", "--data", EVAL, "--labels", "labels", "--samples", 32, "--max-drop", 1],
    "benchmark": [CNN, "{quantized}", "--runs", 5],
    "analyze": [CNN, "{quantized}", "--data", EVAL, "--labels", "labels", "--samples", 4],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_json_is_alone_on_stdout(command: str, quantized: Path) -> None:
    args = [quantized if a == "{quantized}" else a for a in COMMANDS[command]]
    assert _document(command, *args)["command"] == command


def test_recipe_json_is_alone_on_stdout(tmp_path: Path) -> None:
    recipe = tmp_path / "job.toml"
    recipe.write_text(f'command = "quantize"\nmodel = "{CNN}"\noutput = "out.onnx"\ncalib = "{CALIB}"\n'
                      "calib-samples = 8\n", encoding="utf-8")
    document = _document("run", recipe)
    assert document["command"] == "quantize" and (tmp_path / "out.onnx").is_file()


def test_error_is_json_on_stdout_with_exit_2(tmp_path: Path) -> None:
    document = _document("inspect", tmp_path / "missing.onnx", code=2)
    assert document["command"] == "error" and document["exit_code"] == 2
    assert document["error"] == "ModelError" and "missing.onnx" in document["message"]


@pytest.mark.skipif(JQ is None or BASH is None, reason="needs bash and jq")
def test_a_real_pipe_into_jq() -> None:
    pipeline = """"$0" inspect "$1" --json | jq -r '.inputs[0].name'"""
    proc = subprocess.run([str(BASH), "--norc", "-o", "pipefail", "-c", pipeline, str(EXE), str(CNN)],
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (0, "image\n"), proc.stderr


def _complete(words: str) -> list[str]:
    """What bash completion offers for the last of `words` (Typer's protocol: the script sets these)."""
    parts = words.split(" ")
    proc = _run(env={"_QCONVERT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)})
    return proc.stdout.split()


def test_show_completion_prints_the_bash_script() -> None:
    script = _run("--show-completion", "bash").stdout
    assert "complete -o default -F _qconvert_completion qconvert" in script
    assert "_QCONVERT_COMPLETE=complete_bash" in script


def test_completion_offers_commands_options_and_choices() -> None:
    assert _complete("qconvert quan") == ["quantize"]
    assert "--min-cosine" in _complete("qconvert quantize --min-c")
    assert _complete("qconvert quantize --mode s") == ["static"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_bash_completes_through_the_installed_script(tmp_path: Path) -> None:
    script = tmp_path / "qconvert.sh"
    script.write_text(_run("--show-completion", "bash").stdout, encoding="utf-8")
    probe = ('source "$1"; COMP_WORDS=(qconvert valid); COMP_CWORD=1; _qconvert_completion qconvert; '
             'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run([str(BASH), "--norc", "--noprofile", "-c", probe, "bash", str(script)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{EXE.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.stdout.split() == ["validate"], proc.stderr


def test_install_completion_writes_into_home_only(tmp_path: Path) -> None:
    real_rc = Path.home() / ".bashrc"
    before = real_rc.stat().st_mtime_ns if real_rc.exists() else None
    _run("--install-completion", "bash", env={"HOME": str(tmp_path)})
    installed = tmp_path / ".bash_completions" / "qconvert.sh"
    assert f"source '{installed}'" in (tmp_path / ".bashrc").read_text()
    assert "_qconvert_completion" in installed.read_text()
    assert (real_rc.stat().st_mtime_ns if real_rc.exists() else None) == before
