"""16-bit floats: `convert` to float16 and bfloat16, what stays float32 and why, and what validate and
benchmark say about the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime import __version__ as ort_version
from typer.testing import CliRunner

from qconvert import DataConfig, benchmark, convert, input_specs, open_data, quantize, validate
from qconvert.cli.app import app
from qconvert.config import CPU, BenchmarkConfig, FloatConfig, FloatType, LanguageConfig, TextData, ValidateConfig
from qconvert.errors import ExitCode, ModelError, OutputError, UsageError
from qconvert.measurement.metrics import cosine
from qconvert.providers import typed_kernels
from tests import models
from tests.conftest import SAMPLES

FP16 = FloatConfig()
BF16 = FloatConfig(to=FloatType.BF16)
LISTED = typed_kernels(CPU, "float16") is not None  # False on onnxruntime-openvino (it cannot list its kernels)


def _cosines(reference: list[np.ndarray], found: list[np.ndarray]) -> list[float]:
    """Per output, the lowest cosine to the reference over the batch's rows."""
    return [min(cosine(a[i], b[i]) for i in range(len(a))) for a, b in zip(reference, found, strict=True)]


def _elem_types(path: Path) -> set[int]:
    model = onnx.load(str(path))
    return {t.data_type for t in model.graph.initializer} | {
        v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}


@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_fp16_sample_models_are_close_and_half_the_size(tmp_path: Path, name: str) -> None:
    src, out = SAMPLES / f"{name}.onnx", tmp_path / f"{name}.fp16.onnx"
    result = convert(src, out, config=FP16)
    images = np.load(SAMPLES / "digits.eval.npz")["image"][:64]
    assert min(_cosines(models.run(src, {"image": images}), models.run(out, {"image": images}))) >= 0.9999
    assert result.size_ratio >= 1.9 and result.converted_nodes == result.float_nodes and not result.kept
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # a drop-in replacement
    assert {t.data_type for t in model.graph.initializer if t.dims and np.prod(t.dims) > 16} == {TensorProto.FLOAT16}
    assert any("no activation range was checked" in w for w in result.warnings)
    assert result.calibration_samples == 0 and result.to_dict()["range_checked"] is False


def test_an_activation_beyond_float16_stays_float32_with_calibration_data(tmp_path: Path) -> None:
    model = models.overflowing_mlp()
    src = models.save(model, tmp_path / "m.onnx")
    calib = models.write_npz(model, tmp_path / "calib.npz", 32)
    feeds = models.inputs_for(model, 64, seed=7)
    reference = models.run(src, feeds)
    blind = convert(src, tmp_path / "blind.onnx")
    assert not blind.kept  # no data: nothing says the middle passes 65504, and float16 breaks it
    assert _cosines(reference, models.run(tmp_path / "blind.onnx", feeds))[0] < 0.9
    data = open_data(DataConfig(str(calib)), input_specs(model))
    result = convert(src, tmp_path / "fp16.onnx", data)
    kept = {k.name: k.reason for k in result.kept}
    assert set(kept) == {"scale_up", "relu", "rows", "scale_down"}
    assert "'big'" in kept["scale_up"] and "on the calibration data" in kept["scale_up"]
    assert "reads 'big_relu'" in kept["scale_down"]
    found = models.run(tmp_path / "fp16.onnx", feeds)
    assert np.isfinite(found[0]).all() and _cosines(reference, found)[0] >= 0.9999
    assert result.check is not None and result.check.worst_cosine >= 0.9999 and result.calibration_samples == 32
    assert not any("no activation range" in w for w in result.warnings)
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph  # the kept region reads float32 end to end
    producers = {o: n for n in graph.node for o in n.output}
    assert producers[next(n for n in graph.node if n.name == "scale_down").input[0]].name == "rows"


def test_weights_beyond_float16_keep_their_readers(tmp_path: Path) -> None:
    model = models.mlp()
    big = next(t for t in model.graph.initializer if len(t.dims) == 2)
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1e6, big.name))
    result = convert(models.save(model, tmp_path / "m.onnx"), tmp_path / "o.onnx")
    peak = np.abs(numpy_helper.to_array(big)).max()
    assert [k.reason for k in result.kept] == [f"weight {big.name!r} reaches {peak:.3g}, beyond float16's 65504"]
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert next(t for t in out.graph.initializer if t.name == big.name).data_type == TensorProto.FLOAT


def test_keep_float_by_glob_and_op_type(tmp_path: Path, cnn: Path) -> None:
    result = convert(cnn, tmp_path / "o.onnx", config=FloatConfig(keep_float=("conv*", "MatMul", "nothing*")))
    assert {(k.name, k.reason) for k in result.kept} == {
        ("conv1", "kept by --keep-float conv*"), ("conv2", "kept by --keep-float conv*"),
        ("fc", "kept by --keep-float MatMul")}
    assert result.warnings[0] == "--keep-float 'nothing*' matches no node name or op type"
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert {t.name: t.data_type for t in out.graph.initializer}["w1"] == TensorProto.FLOAT


def test_the_provider_rule_keeps_ops_without_a_16_bit_kernel(tmp_path: Path, cnn: Path) -> None:
    result = convert(cnn, tmp_path / "o.onnx", config=FloatConfig(provider="cpu"))
    reasons = {k.name: k.reason for k in result.kept}
    if not LISTED:  # a build that cannot list its kernels: the rule says it was not applied
        assert not reasons and any("lists no kernels for CPUExecutionProvider" in w for w in result.warnings)
        return
    assert reasons["conv1"] == "CPUExecutionProvider has no float16 kernel for Conv"
    assert result.cpu_casts == 0  # what it converted, the CPU provider runs in float16


def test_io_types_in_16_bits(tmp_path: Path, cnn: Path) -> None:
    convert(cnn, tmp_path / "o.onnx", config=FloatConfig(io_float32=False))
    model = onnx.load(str(tmp_path / "o.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    out = models.run(tmp_path / "o.onnx", {"x": np.ones((2, 3, 16, 16), np.float16)})
    assert out[0].dtype == np.float16


def test_bf16_upgrades_the_opset_and_rounds_from_float32(tmp_path: Path, cnn: Path, cnn_calib: Path) -> None:
    result = convert(cnn, tmp_path / "o.onnx", config=BF16)
    assert (result.opset_before, result.opset_after) == (17, 22)  # Conv takes bfloat16 from opset 22
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    source = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(cnn)).graph.initializer}
    out = {t.name: t for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    assert out["w1"].data_type == TensorProto.BFLOAT16
    expected = source["w1"].astype(ml_dtypes.bfloat16)
    assert np.array_equal(numpy_helper.to_array(out["w1"]).view(np.uint16), expected.view(np.uint16))
    assert TensorProto.FLOAT16 not in _elem_types(tmp_path / "o.onnx")
    with pytest.raises(ModelError, match="bfloat16 model, and onnxruntime's CPU provider has no bfloat16 kernels"):
        validate(cnn, tmp_path / "o.onnx", open_data(DataConfig(str(cnn_calib)), input_specs(models.conv_mlp())),
                 config=ValidateConfig())


def test_subgraphs_and_external_data(tmp_path: Path) -> None:
    model = models.with_if_subgraph()
    src = models.save(model, tmp_path / "if.onnx", external=True)
    convert(src, tmp_path / "o.onnx")  # the weights are read from the sidecar
    feeds = models.inputs_for(model, 4, seed=1)
    assert min(_cosines(models.run(src, feeds), models.run(tmp_path / "o.onnx", feeds))) >= 0.999
    bodies = [a.g for n in onnx.load(str(tmp_path / "o.onnx")).graph.node for a in n.attribute if a.g.node]
    assert bodies and all(t.data_type == TensorProto.FLOAT16 for g in bodies for t in g.initializer)


def test_refusals_write_nothing(tmp_path: Path, cnn: Path, cnn_calib: Path) -> None:
    digest = hashlib.sha256(cnn.read_bytes()).hexdigest()
    before = set(tmp_path.iterdir())
    quantized = tmp_path / "q.onnx"
    quantize(cnn, quantized)
    with pytest.raises(ModelError, match=r"is already quantized .*: convert writes float models in 16 bits"):
        convert(quantized, tmp_path / "a.onnx")
    convert(cnn, tmp_path / "half.onnx", config=FloatConfig(io_float32=False))
    with pytest.raises(ModelError, match="no float32 tensor to convert"):
        convert(tmp_path / "half.onnx", tmp_path / "b.onnx")
    with pytest.raises(OutputError):
        convert(cnn, cnn)
    with pytest.raises(UsageError, match="--max-activation"):
        FloatConfig(activation_limit=1e6)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    assert hashlib.sha256(cnn.read_bytes()).hexdigest() == digest
    assert set(tmp_path.iterdir()) - before == {tmp_path / "half.onnx", quantized}


def test_benchmark_says_float16_on_the_cpu_runs_through_casts(tmp_path: Path, cnn: Path) -> None:
    convert(cnn, tmp_path / "o.onnx")
    result = benchmark([cnn, tmp_path / "o.onnx"], {"x": np.ones((1, 3, 16, 16), np.float32)},
                       config=BenchmarkConfig(runs=3, warmup=1))
    assert result.to_dict()["warnings"] == result.warnings
    if not LISTED:  # nothing is known of the CPU provider's float16 kernels: nothing is claimed
        assert not result.warnings
        return
    assert len(result.warnings) == 1 and result.warnings[0].startswith("o.onnx: 7 of its 8 float16 nodes have no")
    plain = benchmark([cnn, cnn], {"x": np.ones((1, 3, 16, 16), np.float32)}, config=BenchmarkConfig(runs=2, warmup=1))
    assert not plain.warnings


def test_convert_cli(tmp_path: Path, cnn: Path, cnn_calib: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["convert", str(cnn), "-o", str(tmp_path / "o.onnx"), "--calib", str(cnn_calib),
                               "--keep-float", "fc", "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["command"] == "convert" and doc["to"] == "fp16" and doc["range_checked"] is True
    assert doc["kept"] == [{"name": "fc", "op_type": "MatMul", "graph": "main", "reason": "kept by --keep-float fc"}]
    assert doc["check"]["worst_cosine"] >= 0.9999
    bad = runner.invoke(app, ["convert", str(cnn), "-o", str(tmp_path / "b.onnx"), "--io-types", "fp16",
                              "--to", "bf16"])
    assert bad.exit_code == ExitCode.BAD_INPUT and "--io-types takes fp32 or the --to type (bf16)" in bad.output
    assert not (tmp_path / "b.onnx").exists()


def test_a_constant_beyond_float16_stays_float32_with_its_readers(tmp_path: Path) -> None:
    """A weight made by a Constant node (as BatchNormalization variances in PP-OCR's detector are):
    the converter would clamp it to 65504."""
    big = onnx.helper.make_node("Constant", [], ["c"], name="big", value=numpy_helper.from_array(
        np.array([1e5], np.float32)))
    graph = onnx.helper.make_graph([big, onnx.helper.make_node("Div", ["x", "c"], ["y"], name="div")], "g",
                                   [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    src = models.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8),
                      tmp_path / "c.onnx")
    result = convert(src, tmp_path / "o.onnx")
    assert {k.name for k in result.kept} == {"big", "div"}
    assert models.run(tmp_path / "o.onnx", {"x": np.array([1e5], np.float32)})[0].tolist() == [1.0]


def test_weights_listed_as_inputs_too_are_converted(tmp_path: Path) -> None:
    """IR 3 and Caffe2 exports list every initializer as a graph input: left there, the converter casts
    them on entry and stores them in float32."""
    model = models.initializers_as_inputs()
    src = models.save(model, tmp_path / "m.onnx")
    result = convert(src, tmp_path / "o.onnx")
    out = onnx.load(str(tmp_path / "o.onnx"))
    weights = {t.name for t in out.graph.initializer if len(t.dims) > 1}
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer if t.name in weights)
    assert result.size_ratio > 1.5
    feeds = models.inputs_for(onnx.load(str(tmp_path / "o.onnx")), 4, seed=2)
    assert min(_cosines(models.run(src, feeds), models.run(tmp_path / "o.onnx", feeds))) >= 0.9999


@pytest.mark.skipif(tuple(int(v) for v in ort_version.split(".")[:2]) < (1, 30),
                    reason=f"onnxruntime {ort_version}'s SimplifiedLayerNormFusion fails on a float16 decoder "
                           "(GetIndexFromName on the casts it inserts)")
def test_a_float16_language_model_validates_on_text(tmp_path: Path) -> None:
    """The sample decoder (KV cache in float32 inputs and outputs, casts inside) keeps its perplexity."""
    folder = SAMPLES / "tiny_llm"
    convert(folder / "model.onnx", tmp_path / "model.onnx")
    found = validate(folder / "model.onnx", tmp_path / "model.onnx",
                     TextData(text=folder / "eval.txt", tokenizer=folder / "tokenizer.json"),
                     config=ValidateConfig(language=LanguageConfig(max_windows=4, prompts=0))).language
    assert found is not None and abs(found.perplexity_ratio - 1) < 1e-3 and found.top1_agreement > 0.98
