"""quantize(): both modes, the model shapes exporters produce, node selection, and refusals."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from qconvert import DataConfig, Mode, QuantizeConfig, input_specs, load_model, open_data, quantize
from qconvert.config import ActivationType, CalibrationMethod, WeightType
from qconvert.errors import ModelError, NothingQuantizedError, OutputError, UsageError
from qconvert.quantization.planning import quantization_kinds
from tests import models


def _data(model: Path, source: str | Path, samples: int | None = None):  # type: ignore[no-untyped-def]
    return open_data(DataConfig(str(source), max_samples=samples), input_specs(load_model(model).proto))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _close_to_fp32(fp32: Path, quant: Path, proto: onnx.ModelProto, min_cosine: float) -> None:
    feeds = models.inputs_for(proto, batch=8, seed=99)
    ref, got = models.run(fp32, feeds)[0], models.run(quant, feeds)[0]
    assert got.shape == ref.shape
    assert _cosine(ref, got) >= min_cosine
    assert not np.allclose(ref, got, atol=0, rtol=0), "outputs identical: nothing was really quantized"


def test_static_cnn_is_qdq_and_close_to_fp32(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    before = cnn.read_bytes()
    result = quantize(cnn, out, _data(cnn, cnn_calib), config=QuantizeConfig())
    assert result.mode == "static" and result.mode_reason == "calibration data given"
    assert result.op_types["Conv"].quantized == result.op_types["Conv"].candidates == 2
    assert result.calibration_samples == 16
    kinds = quantization_kinds(onnx.load(str(out)))
    assert kinds["qdq"] > 0 and kinds["integer"] == 0
    assert cnn.read_bytes() == before, "input modified"
    _close_to_fp32(cnn, out, models.conv_mlp(), min_cosine=0.99)


def test_calib_samples_cap_is_honoured(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    result = quantize(cnn, tmp_path / "q.onnx", _data(cnn, cnn_calib, samples=5))
    assert result.calibration_samples == 5


def test_dynamic_mlp_uses_integer_ops(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = quantize(mlp, out)
    assert result.mode == "dynamic" and result.mode_reason == "no calibration data given"
    assert result.op_types["MatMul"].quantized == 2
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    _close_to_fp32(mlp, out, models.mlp(), min_cosine=0.995)
    assert result.bytes_after < result.bytes_before


def test_dynamic_ignores_calibration_data_and_says_so(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    result = quantize(mlp, tmp_path / "q.onnx", _data(mlp, mlp_calib), config=QuantizeConfig(mode=Mode.DYNAMIC))
    assert result.calibration_samples == 0
    assert any("calibration data not used" in w for w in result.warnings)


def test_static_without_data_is_a_usage_error(mlp: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize(mlp, tmp_path / "q.onnx", config=QuantizeConfig(mode=Mode.STATIC))
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize(("activations", "weights", "elem"), [
    (ActivationType.INT8, WeightType.INT8, onnx.TensorProto.INT8),
    (ActivationType.UINT16, WeightType.INT8, onnx.TensorProto.UINT16),
    (ActivationType.INT16, WeightType.INT16, onnx.TensorProto.INT16),
])
def test_activation_types_reach_the_model(mlp: Path, mlp_calib: Path, tmp_path: Path,
                                          activations: ActivationType, weights: WeightType, elem: int) -> None:
    out = tmp_path / "q.onnx"
    quantize(mlp, out, _data(mlp, mlp_calib), config=QuantizeConfig(activations=activations, weights=weights))
    model = onnx.load(str(out))
    zero_points = {i.name: i.data_type for i in model.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_points["x_zero_point"] == elem
    _close_to_fp32(mlp, out, models.mlp(), min_cosine=0.99)


def test_int4_weights_on_matmul(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize(mlp, out, _data(mlp, mlp_calib),
             config=QuantizeConfig(weights=WeightType.INT4, op_types=("MatMul",), per_channel=False))
    model = onnx.load(str(out))
    assert any(i.data_type == onnx.TensorProto.INT4 for i in model.graph.initializer)
    _close_to_fp32(mlp, out, models.mlp(), min_cosine=0.95)


def test_int4_needs_matmul_only(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="4-bit"):
        quantize(mlp, tmp_path / "q.onnx", _data(mlp, mlp_calib), config=QuantizeConfig(weights=WeightType.INT4))


def test_dynamic_refuses_16_bit_weights(mlp: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="dynamic mode"):
        quantize(mlp, tmp_path / "q.onnx", config=QuantizeConfig(weights=WeightType.INT16))


def test_distribution_method_is_refused_not_silently_wrong(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="float8"):
        quantize(cnn, tmp_path / "q.onnx", _data(cnn, cnn_calib), config=QuantizeConfig(
            method=CalibrationMethod.DISTRIBUTION))


@pytest.mark.parametrize("method", [m for m in CalibrationMethod if m is not CalibrationMethod.DISTRIBUTION])
def test_every_calibration_method(cnn: Path, cnn_calib: Path, tmp_path: Path, method: CalibrationMethod) -> None:
    out = tmp_path / "q.onnx"
    result = quantize(cnn, out, _data(cnn, cnn_calib, samples=4), config=QuantizeConfig(method=method))
    assert result.config["method"] == method.value
    _close_to_fp32(cnn, out, models.conv_mlp(), min_cosine=0.95)


def test_per_tensor_has_scalar_weight_scales(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize(cnn, out, _data(cnn, cnn_calib), config=QuantizeConfig(per_channel=False))
    scales = {i.name: list(i.dims) for i in onnx.load(str(out)).graph.initializer}
    assert scales["w1_scale"] == []
    out2 = tmp_path / "q2.onnx"
    quantize(cnn, out2, _data(cnn, cnn_calib), config=QuantizeConfig(per_channel=True))
    scales2 = {i.name: list(i.dims) for i in onnx.load(str(out2)).graph.initializer}
    assert scales2["w1_scale"] == [8]


def test_exclude_nodes_by_glob_and_op_type(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    result = quantize(cnn, tmp_path / "q.onnx", _data(cnn, cnn_calib),
                      config=QuantizeConfig(exclude_nodes=("conv2*",), exclude_op_types=("Gemm", "MatMul")))
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons["conv2"] == "excluded by --exclude-nodes conv2*"
    assert result.op_types["Conv"].quantized == 1
    assert all("--exclude-op-types" in r for n, r in reasons.items() if n.startswith("fc"))
    out_nodes = {n.name: n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    producers = {o: n.op_type for n in out_nodes.values() for o in n.output}
    assert producers.get(out_nodes["conv2"].input[1]) is None, "excluded Conv keeps its float weight"
    assert producers.get(out_nodes["conv1"].input[1]) == "DequantizeLinear"


def test_op_types_restricts(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    result = quantize(cnn, tmp_path / "q.onnx", _data(cnn, cnn_calib), config=QuantizeConfig(op_types=("Conv",)))
    assert {op for op, c in result.op_types.items() if c.quantized} <= {"Conv", "Relu"}
    assert any(s.reason == "op type not in --op-types" for s in result.skipped)


def test_subgraphs_dynamic_quantizes_if_bodies(tmp_path: Path) -> None:
    src = models.save(models.with_if_subgraph(), tmp_path / "if.onnx")
    out = tmp_path / "q.onnx"
    result = quantize(src, out)
    assert result.config["subgraphs"] is True, "default on when the model has subgraphs"
    assert result.op_types["MatMul"].quantized == 3
    branch = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "If")
    body_ops = {n.op_type for a in branch.attribute for n in a.g.node}
    assert "MatMulInteger" in body_ops
    _close_to_fp32(src, out, models.with_if_subgraph(), min_cosine=0.99)


def test_no_subgraphs_skips_bodies_with_a_reason(tmp_path: Path) -> None:
    src = models.save(models.with_if_subgraph(), tmp_path / "if.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=QuantizeConfig(subgraphs=False))
    assert result.op_types["MatMul"].quantized == 1
    assert {s.name: s.reason for s in result.skipped} == {
        "then_mm": "in a subgraph (--no-subgraphs)", "else_mm": "in a subgraph (--no-subgraphs)"}


def test_static_quantizes_subgraph_bodies_dynamically(tmp_path: Path) -> None:
    proto = models.with_if_subgraph()
    src = models.save(proto, tmp_path / "if.onnx")
    calib = models.write_npz(proto, tmp_path / "c.npz", samples=8)
    out = tmp_path / "q.onnx"
    result = quantize(src, out, _data(src, calib))
    assert result.mode == "static" and result.op_types["MatMul"].quantized == 3
    assert any("do not enter subgraphs" in w or "does not enter subgraphs" in w for w in result.warnings)
    kinds = quantization_kinds(onnx.load(str(out)))
    assert kinds["qdq"] > 0 and kinds["integer"] > 0
    _close_to_fp32(src, out, proto, min_cosine=0.99)


def test_only_subgraph_with_no_subgraphs_quantizes_nothing(tmp_path: Path) -> None:
    src = models.save(models.only_subgraph_matmul(), tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    with pytest.raises(NothingQuantizedError) as info:
        quantize(src, out, config=QuantizeConfig(subgraphs=False))
    assert "in a subgraph (--no-subgraphs)" in info.value.details
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_initializers_listed_as_inputs(tmp_path: Path) -> None:
    proto = models.initializers_as_inputs()
    src = models.save(proto, tmp_path / "old.onnx")
    assert [s.name for s in input_specs(load_model(src).proto)] == ["x"]
    out = tmp_path / "q.onnx"
    result = quantize(src, out, _data(src, "synthetic"))
    assert result.op_types["MatMul"].quantized == 2
    assert result.preprocess is not None
    passes = {p["name"]: p["changed"] for p in result.preprocess["passes"]}  # type: ignore[index]
    assert passes["remove-initializer-inputs"] == 2
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["x"]
    _close_to_fp32(src, out, proto, min_cosine=0.99)


def test_constant_weights_are_folded(tmp_path: Path) -> None:
    proto = models.constant_weights()
    src = models.save(proto, tmp_path / "const.onnx")
    with pytest.raises(NothingQuantizedError, match="none quantized"):
        quantize(src, tmp_path / "raw.onnx", config=QuantizeConfig(preprocess=False))
    out = tmp_path / "q.onnx"
    result = quantize(src, out)
    assert result.quantized_nodes == 2
    passes = {p["name"]: p["changed"] for p in result.preprocess["passes"]}  # type: ignore[index]
    assert passes["fold-constants"] == 4
    _close_to_fp32(src, out, proto, min_cosine=0.99)


def test_external_data_in_and_out(tmp_path: Path) -> None:
    proto = models.mlp(hidden=256)  # int8 weights of 4 KB: over onnx's 1 KB external-data threshold
    src = models.save(proto, tmp_path / "ext.onnx", external=True)
    assert load_model(src).uses_external_data
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "q.onnx"
    result = quantize(src, out, _data(src, "synthetic"))
    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 2 and names[0] == "q.onnx", "no temporary files left"
    assert re.fullmatch(r"q\.onnx\.[0-9a-f]{12}\.data", names[1]), "the sidecar is named by its content"
    assert result.bytes_after == out.stat().st_size + (out_dir / names[1]).stat().st_size
    _close_to_fp32(src, out, proto, min_cosine=0.99)


def test_nothing_to_quantize_is_an_error(tmp_path: Path) -> None:
    src = models.save(models.no_quantizable_ops(), tmp_path / "n.onnx")
    with pytest.raises(NothingQuantizedError) as info:
        quantize(src, tmp_path / "q.onnx")
    assert info.value.exit_code == 2
    assert not (tmp_path / "q.onnx").exists()


def test_existing_output_needs_force(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists"):
        quantize(mlp, out)
    assert out.read_bytes() == b"keep me"
    quantize(mlp, out, force=True)
    assert onnx.load(str(out)).graph.node


def test_output_over_input_is_refused_even_with_force(mlp: Path) -> None:
    before = mlp.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        quantize(mlp, mlp, force=True)
    assert mlp.read_bytes() == before


def test_already_quantized_input_is_refused(mlp: Path, tmp_path: Path) -> None:
    quantize(mlp, tmp_path / "q.onnx")
    with pytest.raises(ModelError, match="already quantized"):
        quantize(tmp_path / "q.onnx", tmp_path / "qq.onnx")


def test_same_inputs_give_identical_bytes(cnn: Path, cnn_calib: Path, tmp_path: Path) -> None:
    quantize(cnn, tmp_path / "a.onnx", _data(cnn, cnn_calib))
    quantize(cnn, tmp_path / "b.onnx", _data(cnn, cnn_calib))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_old_opset_models_are_upgraded_and_quantized(tmp_path: Path) -> None:
    proto = models.conv_mlp()
    proto.opset_import[0].version = 9  # QuantizeLinear needs opset 10: Caffe2-era exports lack it
    proto.ir_version = 4
    src = models.save(proto, tmp_path / "op9.onnx")
    out = tmp_path / "q.onnx"
    result = quantize(src, out, _data(src, "synthetic"))
    assert result.op_types["Conv"].quantized == 2
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")} == {13}
    _close_to_fp32(src, out, proto, min_cosine=0.99)
    # Without the upgrade onnxruntime writes per-channel DequantizeLinear with `axis` at opset 11,
    # which it cannot load itself: refused, nothing written.
    raw = tmp_path / "raw.onnx"
    with pytest.raises(ModelError, match="cannot load"):
        quantize(src, raw, _data(src, "synthetic"), config=QuantizeConfig(preprocess=False))
    assert not raw.exists()


@pytest.mark.parametrize("build", [models.initializers_as_inputs, models.constant_weights, models.mlp])
def test_the_loaded_model_is_left_as_it_was(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pre-processing fixes a copy: a LoadedModel the caller holds (and reuses) stays the model on disk."""
    loaded = load_model(models.save(build(), tmp_path / "m.onnx"))
    before = loaded.proto.SerializeToString()
    quantize(loaded, tmp_path / "q.onnx")
    assert loaded.proto.SerializeToString() == before


def _qdq_on(path: Path) -> set[str]:
    """The tensors a QuantizeLinear reads."""
    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


def test_matmul_outputs_no_quantized_op_reads_stay_float(tmp_path: Path) -> None:
    model = models.save(models.residual_block(), tmp_path / "block.onnx")
    calib = models.write_npz(models.residual_block(), tmp_path / "calib.npz", samples=16, seed=1)
    float_out, all_out = tmp_path / "float.onnx", tmp_path / "all.onnx"
    matmuls = QuantizeConfig(op_types=("MatMul",))
    freed = quantize(model, float_out, _data(model, calib), config=matmuls)
    kept = quantize(model, all_out, _data(model, calib), config=replace(matmuls, float_outputs=False))
    assert (freed.float_outputs, kept.float_outputs) == (2, 0)  # "up" feeds a float Add, "down" the output
    assert freed.quantized_nodes == kept.quantized_nodes == 2
    assert _qdq_on(float_out) == {"x", "n"} and {"x", "n"} < _qdq_on(all_out)  # inputs quantized either way
    assert [o.name for o in onnx.load(str(float_out)).graph.output] == ["y"]
    feeds = models.inputs_for(models.residual_block(), batch=32, seed=7)
    ref = models.run(model, feeds)[0]
    freed_cos, kept_cos = (_cosine(ref, models.run(p, feeds)[0]) for p in (float_out, all_out))
    assert freed_cos > 0.999 and freed_cos > kept_cos
    assert not np.allclose(ref, models.run(float_out, feeds)[0], atol=0, rtol=0)


def test_matmul_outputs_a_quantized_op_reads_keep_their_qdq(tmp_path: Path) -> None:
    model = models.save(models.residual_block(), tmp_path / "block.onnx")
    calib = models.write_npz(models.residual_block(), tmp_path / "calib.npz", samples=16, seed=1)
    result = quantize(model, tmp_path / "q.onnx", _data(model, calib), config=QuantizeConfig())  # Add quantized too
    assert "h" in _qdq_on(tmp_path / "q.onnx") and result.float_outputs == 1  # only the graph output is freed


def test_a_tensor_a_subgraph_reads_keeps_its_qdq(tmp_path: Path) -> None:
    model = models.save(models.with_if_subgraph(), tmp_path / "if.onnx")
    calib = models.write_npz(models.with_if_subgraph(), tmp_path / "calib.npz", samples=8, seed=1)
    result = quantize(model, tmp_path / "q.onnx", _data(model, calib), config=QuantizeConfig(mode=Mode.STATIC))
    assert result.float_outputs == 0  # "h" is read by the If bodies by name
    _close_to_fp32(model, tmp_path / "q.onnx", models.with_if_subgraph(), 0.99)
