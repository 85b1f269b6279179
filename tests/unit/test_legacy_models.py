"""Caffe2-era model-zoo exports (shipped in the onnx wheel): IR 3, opset 9, initializers listed as
graph inputs, weights produced by nodes. Each quantizes in both modes and stays close to FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, input_specs, load_model, open_data, quantize
from tests import models

# The three fastest of the nine; bench/legacy_zoo.py runs all of them.
NAMES = ["squeezenet", "shufflenet", "inception_v1"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("name", NAMES)
def test_legacy_export_quantizes_close_to_fp32(name: str, mode: str, tmp_path: Path) -> None:
    proto = models.legacy_zoo(name)
    assert proto.ir_version == 3 and proto.opset_import[0].version == 9
    fp32 = models.save(proto, tmp_path / f"{name}.onnx")
    data = open_data(DataConfig("synthetic", max_samples=8), input_specs(load_model(fp32).proto)) \
        if mode == "static" else None
    out = tmp_path / "q.onnx"
    result = quantize(fp32, out, data)
    passes = {p["name"]: p["changed"] for p in result.to_dict()["preprocess"]["passes"]}
    assert passes["remove-initializer-inputs"] > 0 and passes["fold-constants"] > 0
    assert passes["upgrade-opset"] == 1
    assert result.op_types["Conv"].quantized == result.op_types["Conv"].candidates > 10
    feeds = models.inputs_for(proto, batch=1, seed=3)
    ref, got = models.run(fp32, feeds)[0], models.run(out, feeds)[0]
    assert _cosine(ref, got) >= 0.99
    assert not np.array_equal(ref, got)

