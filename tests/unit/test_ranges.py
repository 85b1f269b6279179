"""Streaming calibration equals onnxruntime's one-shot calibrators, for every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, input_specs, load_model, open_data
from qconvert.calibration import CalibrationData
from qconvert.config import CalibrationMethod
from qconvert.quantization.adapter import CalibrationReader as _Reader
from qconvert.quantization.ranges import calibrate
from tests import models
from tests.conftest import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"


def _data(samples: int) -> CalibrationData:
    specs = input_specs(load_model(MODEL).proto)
    return open_data(DataConfig(str(SAMPLES / "digits.calib.npz"), max_samples=samples), specs)


def _pair(value: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    low, high = (float(np.ravel(v)[0]) for v in value)
    return low, high


def _one_shot(method: CalibrationMethod, symmetric: bool, work: Path, samples: int) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod  # noqa: TID251 - measured against onnxruntime's own
    from onnxruntime.quantization.calibrate import create_calibrator  # noqa: TID251 - measured against onnxruntime's own

    ort_method = {CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
                  CalibrationMethod.PERCENTILE: OrtMethod.Percentile}[method]
    calibrator = create_calibrator(MODEL, [], augmented_model_path=str(work / "ort.onnx"), calibrate_method=ort_method,
                                   extra_options={"symmetric": symmetric})
    calibrator.collect_data(_Reader(_data(samples)))
    return {name: _pair(data.range_value) for name, data in calibrator.compute_data().items()}


@pytest.mark.parametrize(("method", "symmetric"), [
    (CalibrationMethod.MINMAX, False), (CalibrationMethod.MINMAX, True), (CalibrationMethod.ENTROPY, False),
    (CalibrationMethod.PERCENTILE, False), (CalibrationMethod.PERCENTILE, True),
])
def test_streamed_ranges_equal_one_shot_calibration(tmp_path: Path, method: CalibrationMethod,
                                                    symmetric: bool) -> None:
    expected = _one_shot(method, symmetric, tmp_path, samples=24)
    got = calibrate(MODEL, _data(24), [], tmp_path, method=method, symmetric=symmetric)
    assert got.samples == 24
    ranges = {name: _pair(data.range_value) for name, data in got.ranges.items()}
    assert ranges.keys() == expected.keys()
    for name, (low, high) in expected.items():
        assert ranges[name] == pytest.approx((low, high), rel=1e-6, abs=1e-7), name
    spread = [high - low for low, high in ranges.values()]
    assert min(spread) > 0  # real ranges, not a degenerate copy


def test_ranges_do_not_depend_on_sample_order(tmp_path: Path) -> None:
    samples = list(_data(12))
    forward = CalibrationData("list", "forward", _data(1).specs, lambda: iter(samples))
    backward = CalibrationData("list", "backward", _data(1).specs, lambda: iter(samples[::-1]))
    a = calibrate(MODEL, forward, [], tmp_path, method=CalibrationMethod.ENTROPY)
    b = calibrate(MODEL, backward, [], tmp_path, method=CalibrationMethod.ENTROPY)
    for name, data in a.ranges.items():
        np.testing.assert_array_equal(data.range_value, b.ranges[name].range_value)


@pytest.mark.parametrize("external", [False, True])
def test_exposing_a_model_leaves_it_as_it_was(tmp_path: Path, external: bool) -> None:
    """onnx.save with external data moves the weights out of the proto it saves; SmoothQuant then
    read its weights from a file name relative to the working folder (found on MiniLM)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    from qconvert.quantization.ranges import exposing_session

    model = models.outlier_mlp()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    outputs = [o.name for o in model.graph.output]
    exposing_session(model, [model.graph.node[0].output[0]], tmp_path / "e.onnx", external=external,
                     failure="cannot run", hint="-")
    (tmp_path / "e.onnx.data").unlink(missing_ok=True)  # the weights must not need the file
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    for t in model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), weights[t.name])
    assert [o.name for o in model.graph.output] == outputs
