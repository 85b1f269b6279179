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


def test_data_that_does_not_exercise_the_model_is_called_out(tmp_path: Path) -> None:
    import numpy as np

    from qconvert import SearchConfig, ValidateConfig, search_quantize, validate
    from qconvert.config import Gates, Mode, QuantizeConfig
    from qconvert.model.loading import load_model

    src = models.save(models.mlp(), tmp_path / "m.onnx")
    quiet = tmp_path / "zeros.npz"
    np.savez(quiet, x=np.zeros((8, 16), np.float32))  # no bias: every output is exactly zero
    lively = models.write_npz(models.mlp(), tmp_path / "eval.npz", samples=8, seed=2)
    run_job(PipelineJob(src, tmp_path / "q.onnx", config=QuantizeConfig(mode=Mode.DYNAMIC)))
    result = validate(src, tmp_path / "q.onnx", DataConfig(str(quiet)), config=ValidateConfig())
    (warning,) = result.warnings
    assert "'y' is constant (0) over the data" in warning and "--min-sqnr" in warning
    assert result.to_dict()["warnings"] == [warning]
    assert validate(src, tmp_path / "q.onnx", DataConfig(str(lively))).warnings == []
    searched = search_quantize(load_model(src), tmp_path / "s.onnx", None, config=QuantizeConfig(mode=Mode.DYNAMIC),
                               search=SearchConfig(DataConfig(str(quiet)), Gates(min_cosine=0.99), benchmark_runs=0))
    assert warning in searched.notes
