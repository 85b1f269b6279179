"""SmoothQuant-style scale migration is exact in float and moves outliers out of activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert import DataConfig, Mode, QuantizeConfig, input_specs, load_model, open_data, quantize
from qconvert.errors import UsageError
from qconvert.quantization.preparation import save_with_sidecar
from qconvert.quantization.smoothing import smooth
from tests import models


def _residual_model() -> onnx.ModelProto:
    """x (one channel 50x larger) -> two MatMuls sharing x, plus a residual Add that reads x too."""
    rng = np.random.default_rng(0)
    scale = np.ones(8, np.float32)
    scale[3] = 50.0
    inits = [numpy_helper.from_array(scale, "scale"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wb")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["h"], name="outlier"),
             helper.make_node("MatMul", ["h", "wa"], ["a"], name="mma"),
             helper.make_node("MatMul", ["h", "wb"], ["b"], name="mmb"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="sum"),
             helper.make_node("Add", ["ab", "h"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by older onnxruntime builds (onnxruntime-openvino 1.24)
    return model


def test_smoothing_is_exact_in_float_and_keeps_the_residual(tmp_path: Path) -> None:
    model = _residual_model()
    path = tmp_path / "m.onnx"
    save_with_sidecar(model, path)
    npz = models.write_npz(model, tmp_path / "d.npz", samples=16, seed=3)
    data = open_data(DataConfig(str(npz)), input_specs(load_model(path).proto))
    feeds = {"x": np.load(npz)["x"]}
    before = models.run(path, feeds)[0]
    assert smooth(path, data, tmp_path, alpha=0.5) == 2
    after = models.run(path, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    graph = onnx.load(str(path)).graph
    muls = [n for n in graph.node if n.name == "h::smooth"]
    assert len(muls) == 1  # one shared scale for both MatMuls
    residual = next(n for n in graph.node if n.name == "residual")
    assert residual.input[1] == "h"  # the residual path still reads the original activation
    inverse = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "h::smooth_inverse"))
    assert inverse[3] < inverse[0]  # the outlier channel is scaled down the most


def test_the_scale_folds_into_a_constant_mul_when_only_matmuls_read_it(tmp_path: Path) -> None:
    model = _residual_model()
    graph = model.graph
    residual = next(n for n in graph.node if n.name == "residual")
    residual.input[1] = "ab"  # nothing but the two MatMuls reads h now
    path = tmp_path / "m.onnx"
    save_with_sidecar(model, path)
    npz = models.write_npz(model, tmp_path / "d.npz", samples=16, seed=3)
    feeds = {"x": np.load(npz)["x"]}
    before = models.run(path, feeds)[0]
    assert smooth(path, open_data(DataConfig(str(npz)), input_specs(load_model(path).proto)), tmp_path) == 2
    np.testing.assert_allclose(models.run(path, feeds)[0], before, rtol=1e-4, atol=1e-4)
    smoothed = onnx.load(str(path)).graph
    assert not any(n.name.endswith("::smooth") for n in smoothed.node)  # folded: no extra op
    folded = numpy_helper.to_array(next(t for t in smoothed.initializer if t.name == "scale"))
    assert folded[3] < 50.0  # the outlier channel's multiplier shrank


def test_smooth_runs_inside_quantize_and_is_recorded(tmp_path: Path) -> None:
    model = models.save(_residual_model(), tmp_path / "m.onnx")
    npz = models.write_npz(_residual_model(), tmp_path / "d.npz", samples=16, seed=3)
    data = open_data(DataConfig(str(npz)), input_specs(load_model(model).proto))
    result = quantize(model, tmp_path / "q.onnx", data, config=QuantizeConfig(smooth=0.5, op_types=("MatMul",)))
    assert result.config["smooth"] == 0.5 and result.quantized_nodes >= 1
    assert any(n.name.endswith("::smooth") for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)


def test_smooth_is_not_applied_in_dynamic_mode_and_says_so(tmp_path: Path) -> None:
    model = models.save(_residual_model(), tmp_path / "m.onnx")
    result = quantize(model, tmp_path / "q.onnx", None, config=QuantizeConfig(mode=Mode.DYNAMIC, smooth=0.5))
    assert any("--smooth applies to static" in w for w in result.warnings)
    assert not any(n.name.endswith("::smooth") for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)


def test_smooth_strength_is_checked(tmp_path: Path) -> None:
    model = models.save(_residual_model(), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        quantize(model, tmp_path / "q.onnx", None, config=QuantizeConfig(mode=Mode.DYNAMIC, smooth=1.5))
