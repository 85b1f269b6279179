"""A static quantize checks its model against FP32 on a few calibration samples: a wrecked model
never passes quietly."""

from __future__ import annotations

from pathlib import Path

from qconvert import DataConfig, PipelineJob, run_job
from qconvert.workflows.pipeline import CHECK_SAMPLES
from tests import models


def test_a_wrecked_model_says_so_with_the_command_that_mends_it(outlier: tuple[Path, Path, Path],
                                                               tmp_path: Path) -> None:
    model, calib, _ = outlier
    result = run_job(PipelineJob(model, tmp_path / "q.onnx", calibration=DataConfig(str(calib))))
    check = result.quantize.check
    assert check is not None and check.samples == CHECK_SAMPLES and check.worst_cosine < 0.9
    warning = next(w for w in result.quantize.warnings if "far from FP32" in w)
    assert f"cosine {check.worst_cosine:.4f}" in warning and "--eval-data DATA --min-cosine 0.99" in warning
    assert result.report()["check"] == {"samples": CHECK_SAMPLES, "worst_cosine": round(check.worst_cosine, 6),
                                        "output": "y"}


def test_a_sound_model_reports_its_check_without_a_warning(tmp_path: Path) -> None:
    proto = models.mlp()
    src = models.save(proto, tmp_path / "m.onnx")
    calib = models.write_npz(proto, tmp_path / "calib.npz", samples=32, seed=1)
    result = run_job(PipelineJob(src, tmp_path / "q.onnx", calibration=DataConfig(str(calib), max_samples=4)))
    check = result.quantize.check
    assert check is not None and check.samples == 4 and 0.98 <= check.worst_cosine < 1.0
    assert not any("far from FP32" in w for w in result.quantize.warnings)


def test_dynamic_mode_has_no_data_to_check_on(tmp_path: Path) -> None:
    src = models.save(models.mlp(), tmp_path / "m.onnx")
    result = run_job(PipelineJob(src, tmp_path / "q.onnx"))
    assert result.quantize.check is None and result.report()["check"] is None
