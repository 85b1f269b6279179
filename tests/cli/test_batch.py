"""Batches: several models in one command, each in its own worker process; one model's failure
never stops the others or loses their results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode, ModelError, UsageError
from qconvert.model.files import TEMP_SUFFIX
from qconvert.workflows.batch import BATCH_SUFFIX, expand_models, output_for
from tests import models

runner = CliRunner()

CRASHING_READER = '''
import os, signal
from pathlib import Path
import numpy as np

MARK = Path(__file__).with_name("crashed-once")

def samples():
    """The first process to read the data dies from SIGSEGV, like a crash in native code."""
    if not MARK.exists():
        MARK.write_text("")
        os.kill(os.getpid(), signal.SIGSEGV)
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(8)]
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good models and a broken one."""
    found = tmp_path / "models"
    found.mkdir()
    models.save(models.mlp(seed=0), found / "a.onnx")
    models.save(models.mlp(seed=1), found / "b.onnx")
    (found / "broken.onnx").write_bytes(b"not a model")
    return found


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_a_broken_model_fails_alone_and_the_others_finish(folder: Path, mlp_calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(folder), "-o", str(out), "--calib", str(mlp_calib),
                                 "--validate", str(mlp_calib), "--min-cosine", "0.9", "--jobs", "2", "--json"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    batch = json.loads(result.stdout)
    assert batch["command"] == "batch" and batch["counts"] == {"passed": 2, "missed": 0, "failed": 1}
    items = {Path(i["model"]).name: i for i in batch["models"]}
    assert items["broken.onnx"]["status"] == "failed" and items["broken.onnx"]["result"] is None
    assert items["broken.onnx"]["error"]["exit_code"] == ExitCode.BAD_INPUT
    for name in ("a", "b"):
        assert items[f"{name}.onnx"]["status"] == "passed"
        assert items[f"{name}.onnx"]["result"]["validate"][0]["passed"] is True
        assert (out / f"{name}{BATCH_SUFFIX}").is_file()
    assert sorted(p.name for p in out.iterdir()) == [f"a{BATCH_SUFFIX}", f"b{BATCH_SUFFIX}"]
    assert not _leftovers(tmp_path)
    assert "failed" in result.stderr and "broken.onnx" in result.stderr


def test_a_missed_gate_is_exit_3_and_the_table_names_it(folder: Path, mlp_calib: Path, tmp_path: Path) -> None:
    (folder / "broken.onnx").unlink()
    result = runner.invoke(app, ["quantize", str(folder / "*.onnx"), "-o", str(tmp_path / "out" / "{stem}.int8.onnx"),
                                 "--calib", str(mlp_calib), "--validate", str(mlp_calib), "--min-sqnr", "200",
                                 "--report", str(tmp_path / "reports" / "batch.html")])
    assert result.exit_code == ExitCode.GATE_FAILED, result.stderr
    assert "GATE MISSED" in (tmp_path / "reports" / "batch.html").read_text()  # its folder made like the outputs
    assert "2 models · 0 passed · 2 missed a gate" in result.stdout
    assert "min_sqnr" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.int8.onnx", "b.int8.onnx"]


def test_a_crashing_worker_is_recorded_and_the_batch_goes_on(folder: Path, tmp_path: Path) -> None:
    (folder / "broken.onnx").unlink()
    reader = tmp_path / "reader.py"
    reader.write_text(CRASHING_READER)
    report = tmp_path / "batch.json"
    result = runner.invoke(app, ["quantize", str(folder), "-o", str(tmp_path / "out"), "--calib",
                                 f"{reader}:samples", "--jobs", "1", "--report", str(report)])
    assert result.exit_code == ExitCode.ENVIRONMENT, result.stderr
    written = json.loads(report.read_text())
    first, second = written["models"]
    assert first["status"] == "failed" and "SIGSEGV" in first["error"]["message"]
    assert second["status"] == "passed" and second["result"]["nodes"]["quantized"] > 0
    assert not (tmp_path / "out" / f"a{BATCH_SUFFIX}").exists()
    assert (tmp_path / "out" / f"b{BATCH_SUFFIX}").is_file()


def test_workers_do_not_change_the_results(folder: Path, mlp_calib: Path, tmp_path: Path) -> None:
    (folder / "broken.onnx").unlink()
    written = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        result = runner.invoke(app, ["quantize", str(folder / "a.onnx"), str(folder / "b.onnx"), "-o", str(out),
                                     "--calib", str(mlp_calib), "--jobs", jobs,
                                     "--report", str(tmp_path / f"{{stem}}.{jobs}.json")])
        assert result.exit_code == ExitCode.OK, result.stderr
        written[jobs] = {p.name: p.read_bytes() for p in out.iterdir()}
        for stem in ("a", "b"):
            assert json.loads((tmp_path / f"{stem}.{jobs}.json").read_text())["command"] == "quantize"
    assert written["1"] == written["2"] and len(written["1"]) == 2


def test_models_expand_from_files_folders_and_globs(folder: Path) -> None:
    assert expand_models([folder / "a.onnx"]) == ([folder / "a.onnx"], False)
    names = [p.name for p in expand_models([folder])[0]]
    assert names == ["a.onnx", "b.onnx", "broken.onnx"] and expand_models([folder])[1] is True
    assert [p.name for p in expand_models([str(folder / "[ab].onnx")])[0]] == ["a.onnx", "b.onnx"]
    assert len(expand_models([folder / "a.onnx", folder / "a.onnx"])[0]) == 1
    with pytest.raises(ModelError, match="no file matches"):
        expand_models([str(folder / "*.nothing")])


def test_batch_outputs_are_named_and_never_collide(folder: Path, tmp_path: Path) -> None:
    assert output_for(folder / "a.onnx", tmp_path / "q.onnx", batch=False) == tmp_path / "q.onnx"
    assert output_for(folder / "a.onnx", tmp_path / "o", batch=True) == tmp_path / "o" / f"a{BATCH_SUFFIX}"
    assert output_for(folder / "a.onnx", tmp_path / "{stem}-q.onnx", batch=True) == tmp_path / "a-q.onnx"
    with pytest.raises(UsageError, match="cannot all be written"):
        output_for(folder / "a.onnx", tmp_path / "q.onnx", batch=True)
    other = tmp_path / "other"
    other.mkdir()
    models.save(models.mlp(), other / "a.onnx")
    result = runner.invoke(app, ["quantize", str(folder / "a.onnx"), str(other / "a.onnx"), "-o", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.BAD_INPUT and "two models would be written" in result.stderr
    result = runner.invoke(app, ["quantize", str(folder), "-o", str(folder / "{stem}.onnx")])
    assert result.exit_code == ExitCode.BAD_INPUT and "would replace one of the input models" in result.stderr
