"""validate(): metrics against FP32, labels, gates, and the cases that must never look fine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, input_specs, load_model, open_data, quantize
from qconvert.config import Gates, ValidateConfig
from qconvert.errors import DataError, GateFailedError, ModelError, UsageError
from qconvert.measurement.metrics import cosine
from qconvert.measurement.validation import validate
from tests import models
from tests.conftest import SAMPLES


def _data(model: Path, source: Path, labels: str | None = None, samples: int | None = None):  # type: ignore[no-untyped-def]
    return open_data(DataConfig(str(source), labels=labels, max_samples=samples), input_specs(load_model(model).proto))


def test_cosine_edge_cases() -> None:
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.ones(3), np.zeros(3)) == 0.0
    assert math.isnan(cosine(np.ones(3), np.array([1.0, np.nan, 1.0])))
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(-1.0)


def test_a_model_against_itself_is_identical(mlp: Path, mlp_calib: Path) -> None:
    result = validate(mlp, mlp, _data(mlp, mlp_calib), config=ValidateConfig(gates=Gates(min_cosine=0.999)))
    (out,) = result.outputs
    assert out.samples == result.samples == 16
    assert out.mean_cosine == pytest.approx(1.0) and out.max_abs_error == 0.0 and out.sqnr_db == math.inf
    assert out.top1_agreement == 1.0
    assert result.passed and result.to_dict()["outputs"][0]["identical"] is True  # type: ignore[index]


def test_quantized_sample_cnn_with_labels(tmp_path: Path) -> None:
    fp32 = SAMPLES / "digits_cnn.onnx"
    quant = tmp_path / "q.onnx"
    quantize(fp32, quant, _data(fp32, SAMPLES / "digits.calib.npz"))
    gates = Gates(min_cosine=0.99, max_drop=1.0, min_sqnr=15.0)
    result = validate(fp32, quant, _data(fp32, SAMPLES / "digits.eval.npz", labels="labels"),
                      config=ValidateConfig(gates=gates))
    assert result.samples == 360
    assert result.fp32_accuracy == pytest.approx(0.9944, abs=1e-3)  # sample_models/README.md
    assert result.quantized_accuracy is not None and result.accuracy_drop is not None
    assert result.accuracy_drop == pytest.approx((result.fp32_accuracy - result.quantized_accuracy) * 100)
    (out,) = result.outputs
    assert 0.99 < out.mean_cosine < 1.0 and out.worst_cosine <= out.mean_cosine
    assert 0 <= out.worst_sample < 360 and out.top1_agreement is not None and out.top1_agreement > 0.97
    assert out.mse > 0 and 15 < out.sqnr_db < 80
    assert [g.name for g in result.gates] == ["min_cosine", "min_sqnr", "max_drop"] and result.passed
    json.dumps(result.to_dict())  # JSON-safe


def test_missed_gate_fails_and_says_which(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    other = models.save(models.mlp_variant("scaled"), tmp_path / "scaled.onnx")
    result = validate(mlp, other, _data(mlp, mlp_calib),
                      config=ValidateConfig(gates=Gates(min_cosine=0.9, min_sqnr=20.0)))
    cos_gate, sqnr_gate = result.gates
    assert cos_gate.passed and cos_gate.value == pytest.approx(1.0)  # scaling keeps the direction
    assert not sqnr_gate.passed and sqnr_gate.value == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert not result.passed
    with pytest.raises(GateFailedError) as info:
        result.raise_for_gates()
    assert "min_sqnr (y)" in info.value.details[0]


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_broken_output_never_passes(kind: str, mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    broken = models.save(models.mlp_variant(kind), tmp_path / "broken.onnx")
    result = validate(mlp, broken, _data(mlp, mlp_calib), config=ValidateConfig(gates=Gates(min_cosine=-1.0)))
    (out,) = result.outputs
    if kind == "nan":
        assert math.isnan(out.mean_cosine) and out.non_finite == 16 * 4
        assert result.to_dict()["outputs"][0]["mean_cosine"] is None  # type: ignore[index]
    else:
        assert out.mean_cosine == 0.0 and out.non_finite == 0
    assert not result.passed if kind == "nan" else result.passed  # -1 <= 0 passes; NaN never does


def test_outputs_differing_only_in_dtype_are_compared(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    half = models.save(models.mlp_variant("fp16"), tmp_path / "fp16.onnx")
    (out,) = validate(mlp, half, _data(mlp, mlp_calib)).outputs
    assert 0.9999 < out.mean_cosine <= 1.0 and out.max_abs_error > 0


def test_different_signatures_are_refused(mlp: Path, cnn: Path, mlp_calib: Path) -> None:
    with pytest.raises(ModelError, match="signatures differ"):
        validate(mlp, cnn, _data(mlp, mlp_calib))


def test_labels_problems(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--max-drop needs labels"):
        validate(mlp, mlp, _data(mlp, mlp_calib), config=ValidateConfig(gates=Gates(max_drop=1.0)))
    with pytest.raises(DataError, match="no labels 'labels'"):
        _data(mlp, mlp_calib, labels="labels")
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, x=np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32),
             labels=np.array([0, 1, 2, 3, 0, 1]))
    result = validate(mlp, mlp, _data(mlp, labelled, labels="labels"))
    assert result.fp32_accuracy == result.quantized_accuracy and result.accuracy_drop == 0.0
    assert result.fp32_accuracy is not None and 0.0 <= result.fp32_accuracy <= 1.0
