"""Models from quantization-aware training: recognised by inspect, folded by quantize with the
trained scales exactly, and refused where folding does not apply."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert import DataConfig, QuantizeConfig, describe, input_specs, open_data, quantize, validate
from qconvert.config import Mode, Target
from qconvert.errors import ModelError, UsageError
from qconvert.measurement.metrics import cosine
from qconvert.quantization.qat import quantized_values
from tests import models
from tests.conftest import SAMPLES

QAT = SAMPLES / "digits_cnn_qat.onnx"


def test_inspect_recognises_the_sample_qat_export() -> None:
    found = describe(QAT)
    assert found.qat == {"float_weights": 6, "foldable": 6, "activation_pairs": 8, "bits": [8]}
    assert found.to_dict()["qat"] == found.qat
    assert describe(SAMPLES / "digits_cnn.onnx").qat is None


def test_the_sample_qat_export_folds_exactly(tmp_path: Path) -> None:
    digest = hashlib.sha256(QAT.read_bytes()).hexdigest()
    result = quantize(QAT, tmp_path / "q.onnx")
    assert result.mode is Mode.QAT and result.quantized_nodes == result.candidate_nodes == 6
    assert {op: c.quantized for op, c in result.op_types.items()} == {"Conv": 5, "Gemm": 1}
    assert result.bytes_after <= 0.30 * result.bytes_before
    assert any("saturated" in w for w in result.warnings)  # the export has weights beyond the int8 grid
    images = np.load(SAMPLES / "digits.eval.npz")["image"]
    reference, folded = models.run(QAT, {"image": images})[0], models.run(tmp_path / "q.onnx", {"image": images})[0]
    assert np.array_equal(reference, folded)  # the QAT graph's outputs, as onnxruntime runs it
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0].endswith("weight")]
    assert {t.data_type for t in model.graph.initializer if len(t.dims) > 1} == {TensorProto.INT8}
    assert describe(tmp_path / "q.onnx").qat is None
    assert hashlib.sha256(QAT.read_bytes()).hexdigest() == digest
    checked = validate(SAMPLES / "digits_cnn.onnx", tmp_path / "q.onnx",
                       DataConfig(str(SAMPLES / "digits.eval.npz"), labels="labels"))
    assert checked.accuracy_drop is not None and abs(checked.accuracy_drop) <= 1.0  # QAT keeps the accuracy


def test_folding_computes_what_onnxruntime_quantizelinear_computes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8)).astype(np.float32) * 3
    scale = np.abs(rng.standard_normal(8)).astype(np.float32) * 0.01 + 0.005
    x[0] = (np.arange(8) + 0.5) * scale  # exact ties: half to even
    x[1] = 500 * scale  # saturates
    zero = rng.integers(-5, 5, 8).astype(np.int8)
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 8])],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, [6, 8])],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    path = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                       tmp_path / "q.onnx")
    expected = models.run(path, {"x": x})[0]
    assert np.array_equal(quantized_values(x, scale, zero, TensorProto.INT8, axis=1), expected.astype(np.int64))


def test_a_qat_graph_folds_through_identity_zero_points(tmp_path: Path) -> None:
    model = models.qat_mlp()
    src = models.save(model, tmp_path / "qat.onnx")
    calib = models.write_npz(model, tmp_path / "c.npz", 8)
    result = quantize(src, tmp_path / "q.onnx", open_data(DataConfig(str(calib)), input_specs(model)))
    assert result.quantized_nodes == 2 and any("calibration data was not used" in w for w in result.warnings)
    feeds = models.inputs_for(model, 32, seed=5)
    assert np.array_equal(models.run(src, feeds)[0], models.run(tmp_path / "q.onnx", feeds)[0])
    out = onnx.load(str(tmp_path / "q.onnx"))
    assert {n.op_type for n in out.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}  # activations stay
    assert "w1" not in {t.name for t in out.graph.initializer} and "zp_identity" in {n.name for n in out.graph.node}


def test_fix_shape_applies_to_a_qat_model(tmp_path: Path) -> None:
    result = quantize(QAT, tmp_path / "q.onnx", config=QuantizeConfig(fixed_shapes=(("image", (1, 1, 32, 32)),)))
    dims = onnx.load(str(tmp_path / "q.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 32, 32] and result.preprocess is not None


def test_what_folding_refuses(tmp_path: Path, cnn: Path, cnn_calib: Path) -> None:
    with pytest.raises(UsageError, match="would quantize it again"):
        quantize(QAT, tmp_path / "a.onnx", config=QuantizeConfig(mode=Mode.DYNAMIC))
    with pytest.raises(UsageError, match="has no weight behind QuantizeLinear"):
        quantize(cnn, tmp_path / "b.onnx", config=QuantizeConfig(mode=Mode.QAT))
    ptq = tmp_path / "ptq.onnx"
    quantize(cnn, ptq, open_data(DataConfig(str(cnn_calib)), input_specs(models.conv_mlp())))
    with pytest.raises(ModelError, match="is already quantized"):  # integer weights: nothing to fold
        quantize(ptq, tmp_path / "c.onnx")
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx", "c.onnx"))


def test_the_qnn_target_completes_node_units_and_stores_biases_as_int32(tmp_path: Path) -> None:
    result = quantize(QAT, tmp_path / "q.onnx", config=QuantizeConfig(target=Target.QNN))
    assert any("2 value-moving op(s) given a Q/DQ pair on their input's grid (node units), 6 float bias(es) of "
               "Conv/Gemm stored as int32" in w for w in result.warnings)
    model = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        assert producers[node.input[0]].op_type == "DequantizeLinear"  # after MaxPool too
        bias = producers[node.input[2]]
        assert bias.op_type == "DequantizeLinear"
        assert next(t for t in model.graph.initializer if t.name == bias.input[0]).data_type == TensorProto.INT32
    images = np.load(SAMPLES / "digits.eval.npz")["image"][:64]
    reference, found = models.run(QAT, {"image": images})[0], models.run(tmp_path / "q.onnx", {"image": images})[0]
    assert min(cosine(a, b) for a, b in zip(reference, found, strict=True)) >= 0.99999
    npu = quantize(QAT, tmp_path / "npu.onnx", config=QuantizeConfig(float_outputs=False))  # what --ep qnn sets
    assert any(w.startswith("--quantize-all-outputs (an NPU provider): 2 value-moving") for w in npu.warnings)
