"""Outputs are all-or-nothing: written beside the destination, renamed into place, and a failure at
any point leaves the previous output (and every input) as it was, with no temporary files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from qconvert.model.files import TEMP_SUFFIX
from tests import models
from tests.corpus import refused, snapshot

runner = CliRunner()


def _quantize(src: Path, out: Path, *extra: str) -> int:
    return runner.invoke(app, ["quantize", str(src), "-o", str(out), "--force", *extra]).exit_code


def _sidecars(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.data"))


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """An MLP whose quantized weights are big enough for onnxruntime to put them in a sidecar."""
    src = tmp_path / "in"
    src.mkdir()
    return models.save(models.mlp(hidden=512), src / "big.onnx", external=True)


def test_sidecar_is_replaced_not_appended_and_named_by_content(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"  # an earlier output, saved the way onnx.save names sidecars
    onnx.save_model(models.mlp(hidden=64), str(out), save_as_external_data=True, location="q.onnx.data",
                    size_threshold=0)
    assert _quantize(big, out) == 0
    first = _sidecars(tmp_path)
    assert len(first) == 1 and first[0].startswith("q.onnx.") and first[0] != "q.onnx.data"
    assert _quantize(big, out, "--per-tensor") == 0
    second = _sidecars(tmp_path)
    assert len(second) == 1 and second != first, "the previous sidecar went with the previous model"
    x = models.inputs_for(models.mlp(hidden=512), 4, seed=0)
    np.testing.assert_allclose(models.run(out, x)[0], models.run(big, x)[0], atol=0.5)
    assert _quantize(big, out, "--per-tensor") == 0 and _sidecars(tmp_path) == second, "same weights, same name"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_a_symlink_at_the_destination_is_replaced_and_its_target_untouched(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.onnx"
    target.write_bytes(b"precious")
    link = tmp_path / "q.onnx"
    link.symlink_to(target)
    assert _quantize(mlp, link) == 0
    assert target.read_bytes() == b"precious"
    assert not link.is_symlink() and onnx.load(str(link)).graph.node


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_writing_over_the_input_through_a_link_is_refused_even_with_force(mlp: Path, tmp_path: Path,
                                                                          how: str) -> None:
    out = tmp_path / "q.onnx"
    if how == "symlink":
        out.symlink_to(mlp)
    else:
        os.link(mlp, out)
    refused(["quantize", mlp, "-o", out, "--force"], folder=tmp_path, code=ExitCode.BAD_INPUT,
            message="is the input model")


def test_an_output_named_over_the_inputs_sidecar_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save_model(models.mlp(hidden=512), str(src), save_as_external_data=True, location="q.onnx.data",
                    size_threshold=0)
    refused(["quantize", src, "-o", tmp_path / "q.onnx", "--force"], folder=tmp_path, code=ExitCode.BAD_INPUT,
            message="would replace the external data of the input")


def _fail_renames_into(folder: Path, monkeypatch: pytest.MonkeyPatch, *, after: int, error: int) -> None:
    """Make the (after+1)-th rename into `folder` fail with `error`, like a full disk or a crash there."""
    real = os.replace
    calls = {"n": 0}

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).parent == folder:
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(error, os.strerror(error), str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("after", [0, 1], ids=["before-the-sidecar", "between-sidecar-and-model"])
def test_a_failure_mid_write_leaves_the_previous_output_working(big: Path, tmp_path: Path, after: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "q.onnx"
    assert _quantize(big, out) == 0
    x = models.inputs_for(models.mlp(hidden=512), 4, seed=0)
    before = models.run(out, x)[0]
    files = snapshot(tmp_path)
    _fail_renames_into(tmp_path, monkeypatch, after=after, error=errno.ENOSPC)
    result = runner.invoke(app, ["quantize", str(big), "-o", str(out), "--force", "--per-tensor"])
    assert result.exit_code == ExitCode.ENVIRONMENT and "no space left" in result.stderr
    assert "Traceback" not in result.stderr
    monkeypatch.undo()
    assert snapshot(tmp_path) == files
    np.testing.assert_array_equal(models.run(out, x)[0], before)


def test_disk_full_while_writing_the_report_keeps_the_old_report(mlp: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "r.json"
    report.write_text("{}")
    out = tmp_path / "q.onnx"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = runner.invoke(app, ["quantize", str(mlp), "-o", str(out), "--report", str(report)])
    assert result.exit_code == ExitCode.ENVIRONMENT and "no space left" in result.stderr
    assert report.read_text() == "{}"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_a_report_in_a_missing_folder_is_bad_input(mlp: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["quantize", str(mlp), "-o", str(tmp_path / "q.onnx"),
                                 "--report", str(tmp_path / "no" / "r.json")])
    assert result.exit_code == ExitCode.BAD_INPUT and "cannot write the report" in result.stderr
    assert not (tmp_path / "q.onnx").exists()  # refused before any work


def test_temporaries_of_a_killed_run_are_swept_by_the_next(mlp: Path, tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = tmp_path / f".q.onnx.{dead}.abc{TEMP_SUFFIX}"
    stale.mkdir()
    (stale / "prepared.onnx").write_bytes(b"x" * 100)
    alive = tmp_path / f".q.onnx.{os.getppid()}.abc{TEMP_SUFFIX}"
    alive.mkdir()
    assert _quantize(mlp, tmp_path / "q.onnx") == 0
    assert not stale.exists(), "a dead process's staging folder is removed"
    assert alive.exists(), "a live process's is not"


def test_inputs_are_byte_identical_after_every_command(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    q = out / "q.onnx"
    for args in (["inspect", mlp], ["quantize", mlp, "-o", q, "--calib", mlp_calib],
                 ["validate", mlp, q, "--data", mlp_calib], ["benchmark", mlp, q, "--runs", "3"],
                 ["analyze", mlp, q, "--data", mlp_calib]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.stderr
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert sorted(p.name for p in out.iterdir()) == ["q.onnx"]


def test_reports_get_the_usual_permissions(mlp: Path, tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        report = tmp_path / "r.json"
        result = runner.invoke(app, ["quantize", str(mlp), "-o", str(tmp_path / "q.onnx"), "--report", str(report)])
        assert result.exit_code == ExitCode.OK, result.stderr
        assert report.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(mask)


@pytest.mark.parametrize(("args", "message"), [
    (["quantize", "{mlp}", "-o", "{q}", "--report", "{mlp}"], "would replace"),
    (["quantize", "{mlp}", "-o", "{new}", "--report", "{new}"], "would replace"),  # its own output model
    (["quantize", "{mlp}", "-o", "{new}", "--calib", "{calib}", "--report", "{calib}"], "would replace"),
    (["quantize", "{mlp}", "-o", "{new}", "--save-recipe", "{mlp}"], "would replace"),
    (["quantize", "{mlp}", "-o", "{new}", "--report", "{link}"], "would replace"),  # through a symlink
    (["quantize", "{mlp}", "-o", "{new}", "--report", "{r}", "--save-recipe", "{r}"], "would replace"),
    (["quantize", "{mlp}", "{mlp2}", "-o", "{out}", "--report", "{tmp}/{{stem}}.onnx"], "would replace"),
    (["validate", "{mlp}", "{q}", "--data", "{calib}", "--report", "{q}"], "would replace"),
    (["benchmark", "{mlp}", "{q}", "--runs", "2", "--report", "{mlp}"], "would replace"),
    (["analyze", "{mlp}", "{q}", "--data", "{calib}", "--report", "{calib}"], "would replace"),
    (["validate", "{mlp}", "{q}", "--data", "{calib}", "--save-recipe", "{q}"], "would replace"),
    (["quantize", "{mlp}", "-o", "{new}", "--report", "{out}"], "is a folder"),
])
def test_a_report_or_recipe_never_replaces_what_the_run_reads_or_writes(
        args: list[str], message: str, mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.onnx"
    assert _quantize(mlp, q) == 0
    models.save(models.mlp(), tmp_path / "mlp2.onnx")
    (tmp_path / "out").mkdir()
    (tmp_path / "link.json").symlink_to(mlp)
    names = {"mlp": mlp, "mlp2": tmp_path / "mlp2.onnx", "q": q, "new": tmp_path / "new.onnx",
             "calib": mlp_calib, "link": tmp_path / "link.json", "r": tmp_path / "r.json",
             "out": tmp_path / "out", "tmp": tmp_path}
    refused([a.format(**names) for a in args], folder=tmp_path, code=ExitCode.BAD_INPUT, message=message)
