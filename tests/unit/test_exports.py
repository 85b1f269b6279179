"""Models built the way real exporters build them, each quantized in both modes and checked against FP32:
a model onnxruntime loads and runs is never refused for an exporter's convention."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert import DataConfig, Mode, QuantizeConfig, describe, input_specs, load_model, open_data, quantize
from qconvert.measurement.metrics import cosine
from qconvert.model.checks import ONNXRUNTIME_DEFAULT_DOMAIN_OPS
from tests import models

EXPORTS: dict[str, Callable[[], onnx.ModelProto]] = {
    "paddle-dynamic-dims": models.paddle_dynamic_dims,
    "tf2onnx-row-bias": models.row_bias_dense,
    "spox-compute-in-branches": models.compute_in_branches,
    "pytorch-shared-outer-weights": models.shared_outer_weights,
}


@pytest.mark.parametrize("mode", [Mode.STATIC, Mode.DYNAMIC])
@pytest.mark.parametrize("name", list(EXPORTS))
def test_real_export_conventions_quantize_in_both_modes(name: str, mode: Mode, tmp_path: Path) -> None:
    proto = EXPORTS[name]()
    src = models.save(proto, tmp_path / "m.onnx")
    data = None
    if mode is Mode.STATIC:
        calib = models.write_npz(proto, tmp_path / "calib.npz", samples=16, seed=1)
        data = open_data(DataConfig(str(calib)), input_specs(load_model(src).proto))
    out = tmp_path / "q.onnx"
    result = quantize(src, out, data, config=QuantizeConfig(mode=mode))
    assert result.mode is mode and result.quantized_nodes >= 2, result.to_dict()
    for seed in (7, 8):  # both branches of the If models: the sum of x decides which runs
        feeds = models.inputs_for(proto, batch=8, seed=seed)
        feeds = {k: v * (1 if seed == 7 else -1) + (0.5 if seed == 7 else -0.5) for k, v in feeds.items()}
        ref, got = models.run(src, feeds)[0], models.run(out, feeds)[0]
        assert got.shape == ref.shape and cosine(ref, got) >= 0.99
        assert not np.array_equal(ref, got), "outputs identical: nothing was really quantized"


def test_a_negative_dim_is_a_dynamic_dim() -> None:
    model = models.paddle_dynamic_dims()
    assert [spec.dims for spec in input_specs(model)] == [(None, 16)]


def test_inspect_reads_a_paddle_export(tmp_path: Path) -> None:
    result = describe(models.save(models.paddle_dynamic_dims(), tmp_path / "m.onnx"))
    assert result.inputs[0]["shape"] == [None, 16]


def test_a_node_the_quantizer_fails_on_stays_float_and_the_rest_is_quantized(tmp_path: Path) -> None:
    proto = models.row_bias_gemm()
    src = models.save(proto, tmp_path / "m.onnx")
    calib = models.write_npz(proto, tmp_path / "calib.npz", samples=64, seed=1)
    data = open_data(DataConfig(str(calib)), input_specs(load_model(src).proto))
    out = tmp_path / "q.onnx"
    # Without pre-processing the [1, N] bias stays as it is, and onnxruntime's QDQ quantizer fails on it.
    result = quantize(src, out, data, config=QuantizeConfig(preprocess=False))
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons["dense1"].startswith("onnxruntime's quantizer failed on it (")
    assert result.op_types["MatMul"].quantized == 1
    assert any("failed on node 'dense1'" in w and "left in float" in w for w in result.warnings)
    feeds = models.inputs_for(proto, batch=8, seed=7)
    assert cosine(models.run(src, feeds)[0], models.run(out, feeds)[0]) >= 0.99


def test_a_search_on_a_model_quantized_only_in_its_branches_ends_with_a_note(tmp_path: Path) -> None:
    from qconvert import Gates, SearchConfig, search_quantize

    proto = models.compute_in_branches()
    src = models.save(proto, tmp_path / "m.onnx")
    evaluation = models.write_npz(proto, tmp_path / "eval.npz", samples=16, seed=2)
    out = tmp_path / "q.onnx"
    result = search_quantize(load_model(src), out, None, config=QuantizeConfig(mode=Mode.DYNAMIC),
                             search=SearchConfig(DataConfig(str(evaluation)), Gates(min_cosine=0.9999999),
                                                 max_trials=3, benchmark_runs=0))
    assert not result.met and out.exists() and result.quantized.quantized_nodes == 4
    assert any("every one sits in an If/Loop/Scan body" in note for note in result.notes)


@pytest.mark.parametrize("mode", [Mode.STATIC, Mode.DYNAMIC])
def test_outputs_declare_only_the_opset_domains_they_use(mode: Mode, tmp_path: Path) -> None:
    proto = models.conv_mlp()
    src = models.save(proto, tmp_path / "m.onnx")
    calib = models.write_npz(proto, tmp_path / "calib.npz", samples=8, seed=1)
    data = open_data(DataConfig(str(calib)), input_specs(load_model(src).proto)) if mode is Mode.STATIC else None
    quantize(src, tmp_path / "q.onnx", data, config=QuantizeConfig(mode=mode))
    out = onnx.load(str(tmp_path / "q.onnx"))
    used = {n.domain or "" for n in out.graph.node}
    assert {o.domain for o in out.opset_import} == used | {""}


def test_ops_onnxruntime_registers_in_the_default_domain_are_accepted(tmp_path: Path) -> None:
    """onnxruntime-genai's builder writes SimplifiedLayerNormalization in ai.onnx; onnxruntime runs it."""
    from onnxruntime.capi import _pybind_state

    registered = {s.name for s in _pybind_state.get_all_operator_schema() if s.domain in ("", "ai.onnx")}
    assert registered >= ONNXRUNTIME_DEFAULT_DOMAIN_OPS
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    norm = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], name="norm", axis=-1,
                            epsilon=1e-5)
    model = helper.make_model(helper.make_graph([norm], "g", [x], [y], [
        numpy_helper.from_array(np.ones(8, np.float32), "scale")]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime reads (onnx.checker does not know the op: no check here)
    path = models.save(model, tmp_path / "norm.onnx")
    result = describe(path)
    assert result.op_types == {"SimplifiedLayerNormalization": 1}
    feeds = {"x": np.arange(16, dtype=np.float32).reshape(2, 8)}
    out, = models.run(path, feeds)
    ref = feeds["x"] / np.sqrt((feeds["x"] ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
