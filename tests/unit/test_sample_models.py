"""The bundled sample models quantize with accuracy close to FP32 on their held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, Mode, QuantizeConfig, input_specs, load_model, open_data, quantize
from tests import models
from tests.conftest import SAMPLES

EVAL = SAMPLES / "digits.eval.npz"
CALIB = SAMPLES / "digits.calib.npz"


def _top1_and_logits(path: Path) -> tuple[float, np.ndarray]:
    data = np.load(EVAL)
    logits = models.run(path, {"image": data["image"]})[0]
    return float((logits.argmax(axis=1) == data["labels"]).mean()), logits


@pytest.mark.parametrize(("name", "mode"), [
    ("digits_cnn", Mode.STATIC),
    ("digits_transformer", Mode.STATIC),
    ("digits_transformer", Mode.DYNAMIC),
])
def test_sample_model_quantizes_close_to_fp32(tmp_path: Path, name: str, mode: Mode) -> None:
    src = SAMPLES / f"{name}.onnx"
    data = open_data(DataConfig(str(CALIB)), input_specs(load_model(src).proto)) if mode is Mode.STATIC else None
    out = tmp_path / "q.onnx"
    result = quantize(src, out, data, config=QuantizeConfig(mode=mode))
    assert result.mode == mode.value
    assert result.size_ratio > 2.5, "weights went to 8 bits"
    fp32_top1, fp32_logits = _top1_and_logits(src)
    q_top1, q_logits = _top1_and_logits(out)
    assert fp32_top1 >= 0.93, "the sample model itself is accurate"
    assert fp32_top1 - q_top1 <= 0.01, f"top-1 drop {100 * (fp32_top1 - q_top1):.1f} points"
    agreement = float((fp32_logits.argmax(1) == q_logits.argmax(1)).mean())
    assert agreement >= 0.98
    assert not np.array_equal(fp32_logits, q_logits)
