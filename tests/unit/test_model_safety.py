"""qconvert's own model checks (qconvert.model.checks) and external-data validation (qconvert.model.external),
through the library: what they refuse, what they must keep accepting, and how they read."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.errors import ModelError
from qconvert.model import checks as sanity
from qconvert.model import external
from qconvert.model.loading import check_model_file, load_model
from tests import models


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def test_every_domain_onnxruntime_implements_is_allowed() -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    registered = {schema.domain for schema in state.get_all_operator_schema()}
    assert registered <= sanity.NATIVE_DOMAINS


def test_element_sizes_match_onnx() -> None:
    sub_byte = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}
    for name, value in TensorProto.DataType.items():
        if name in ("UNDEFINED", "STRING"):
            assert external.element_bits(value) is None
        elif name in sub_byte:
            assert external.element_bits(value) == sub_byte[name], name
        else:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(value)).itemsize
            assert external.element_bits(value) == 8 * itemsize, name


def test_external_data_is_read_by_qconvert_exactly(tmp_path: Path) -> None:
    path = models.externalize(models.conv_mlp(), tmp_path / "m")
    loaded = load_model(path)
    assert loaded.uses_external_data
    assert loaded.file_bytes == path.stat().st_size + (tmp_path / "m" / "m.onnx.data").stat().st_size
    assert not any(t.HasField("raw_data") for t in loaded.proto.graph.initializer if t.external_data), \
        "external weights stay on disk until a copy is asked for"
    copy = loaded.owned_copy()
    for want, got in zip(models.conv_mlp().graph.initializer, copy.graph.initializer, strict=True):
        assert got.data_location == TensorProto.DEFAULT and not got.external_data
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
    assert any(t.external_data for t in loaded.proto.graph.initializer), "the copy is independent"
    assert check_model_file(path) is None


def test_external_tensors_are_streamed_in_chunks_for_nan(tmp_path: Path) -> None:
    model = models.mlp()
    w = numpy_helper.to_array(_init(model, "w1")).copy()
    w[-1, -1] = np.nan  # in the last chunk only
    _init(model, "w1").CopyFrom(numpy_helper.from_array(w, "w1"))
    path = models.externalize(model, tmp_path / "m")
    proto = onnx.load(str(path), load_external_data=False)
    sites = list(sanity.tensor_sites(proto))
    plan = external.plan_external_data([s.tensor for s in sites], path)
    ref = next(r for r in plan.refs.values() if r.name == "w1")
    chunks = list(plan.chunks(ref, size=64))
    assert len(chunks) == w.nbytes // 64 and b"".join(chunks) == w.tobytes()
    with pytest.raises(ModelError, match="initializer 'w1' holds 1 NaN value"):
        check_model_file(path)


def test_a_sidecar_swapped_after_the_check_is_not_read(tmp_path: Path) -> None:
    path = models.externalize(models.mlp(), tmp_path / "m")
    proto = onnx.load(str(path), load_external_data=False)
    plan = external.plan_external_data([s.tensor for s in sanity.tensor_sites(proto)], path)
    sidecar = tmp_path / "m" / "m.onnx.data"
    data = sidecar.read_bytes()
    (tmp_path / "m" / "copy").write_bytes(data)
    os.replace(tmp_path / "m" / "copy", sidecar)  # same bytes, another file
    with pytest.raises(ModelError, match="changed while it was read"):
        plan.load()


def test_non_finite_counts_for_every_float_type() -> None:
    values = np.array([1.0, np.nan, np.inf, -np.inf, np.nan, 0.0], np.float32)
    assert sanity._non_finite(values.tobytes(), TensorProto.FLOAT) == (2, 2)
    assert sanity._non_finite(values.astype(np.float64).tobytes(), TensorProto.DOUBLE) == (2, 2)
    assert sanity._non_finite(values.astype(np.float16).tobytes(), TensorProto.FLOAT16) == (2, 2)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    assert sanity._non_finite(bf16.tobytes(), TensorProto.BFLOAT16) == (2, 2)
    assert sanity._non_finite(np.ones(8, np.float32).tobytes(), TensorProto.FLOAT) == (0, 0)


def test_nan_in_typed_fields_is_found(tmp_path: Path) -> None:
    model = models.mlp()
    tensor = _init(model, "w1")
    values = numpy_helper.to_array(tensor).ravel().tolist()
    values[5] = float("nan")
    tensor.ClearField("raw_data")
    tensor.float_data.extend(values)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="initializer 'w1' holds 1 NaN"):
        load_model(path)
    half = helper.make_tensor("half", TensorProto.FLOAT16, [2], np.array([1.0, np.nan], np.float16))
    model.graph.initializer.append(half)
    model.graph.node.append(helper.make_node("MatMul", ["hr", "half"], ["unused"], name="reads_half"))
    tensor.float_data[5] = 0.0
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="initializer 'half' holds 1 NaN"):
        load_model(path)


def test_inf_is_refused_only_where_a_quantizable_op_reads_a_weight(tmp_path: Path) -> None:
    model = models.with_if_subgraph()
    model.graph.initializer.append(numpy_helper.from_array(np.array([-np.inf, 0.0], np.float32), "unused_mask"))
    path = models.save(model, tmp_path / "ok.onnx")
    load_model(path)
    branch = next(n for n in model.graph.node if n.op_type == "If")
    w = _init(model, "w_then")
    array = numpy_helper.to_array(w).copy()
    array[0, 0] = np.inf
    w.CopyFrom(numpy_helper.from_array(array, "w_then"))
    assert branch.op_type == "If"
    path = models.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="'w_then', a weight of a quantizable node, holds 1 infinite"):
        load_model(path)


def test_masked_scores_load_and_run(tmp_path: Path) -> None:
    model = models.masked_scores()
    path = models.save(model, tmp_path / "masked.onnx")
    load_model(path)
    out = models.run(path, models.inputs_for(model, 1, 0))[0]
    assert np.isfinite(out).all()


def test_local_functions_and_onnxruntime_domains_are_fine(tmp_path: Path) -> None:
    model = models.mlp()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "MyRelu", "local.functions"
    function = helper.make_function("local.functions", "MyRelu", ["a"], ["b"],
                                    [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local.functions", 1))
    load_model(models.save(model, tmp_path / "fn.onnx"))

    model = models.mlp()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FastGelu", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = models.save(model, tmp_path / "ms.onnx")
    load_model(path)
    models.run(path, models.inputs_for(model, 2, 0))


def test_quantized_models_still_load(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic  # noqa: TID251 - measured against onnxruntime's own

    src = models.save(models.mlp(), tmp_path / "m.onnx")
    quantize_dynamic(str(src), str(tmp_path / "q.onnx"))
    check_model_file(tmp_path / "q.onnx")
    assert any(n.op_type.startswith("DynamicQuantize") or n.op_type == "MatMulInteger"
               for n in load_model(tmp_path / "q.onnx").proto.graph.node)


def test_dims_multiply_as_python_ints(tmp_path: Path) -> None:
    model = models.mlp()
    tensor = _init(model, "w1")
    del tensor.dims[:]
    tensor.dims.extend([2**40, 2**40, 2**40])  # int64 overflow if multiplied in numpy
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"initializer 'w1' claims .*EiB"):
        load_model(path)


def test_a_sidecar_with_unknown_keys_and_no_length_is_fine(tmp_path: Path) -> None:
    path = models.externalize(models.mlp(), tmp_path / "m", sidecar="w1.data")
    proto = onnx.load(str(path), load_external_data=False)
    w2 = _init(proto, "w2")
    # w1 alone in its file, read to the end (no length); an unknown key beside it
    for tensor in proto.graph.initializer:
        if tensor.name == "w1":
            entries = [(e.key, e.value) for e in tensor.external_data if e.key == "location"]
            entries.append(("vendor_hint", "anything"))
            del tensor.external_data[:]
            for k, v in entries:
                e = tensor.external_data.add()
                e.key, e.value = k, v
    size1 = 16 * 32 * 4
    data = (tmp_path / "m" / "w1.data").read_bytes()
    (tmp_path / "m" / "w1.data").write_bytes(data[:size1])
    (tmp_path / "m" / "w2.data").write_bytes(data[size1:])
    for e in w2.external_data:
        if e.key == "location":
            e.value = "w2.data"
        elif e.key == "offset":
            e.value = "0"
    path.write_bytes(proto.SerializeToString())
    loaded = load_model(path).owned_copy()
    np.testing.assert_array_equal(numpy_helper.to_array(_init(loaded, "w1")),
                                  numpy_helper.to_array(_init(models.mlp(), "w1")))


@pytest.mark.parametrize("module", [external, sanity])
def test_checks_never_rely_on_assert(module: object) -> None:
    """`python -O` strips asserts: no check may be one."""
    source = Path(str(getattr(module, "__file__", ""))).read_text()
    assert not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(source)))


def test_model_file_that_is_a_named_pipe_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="not a regular file"):
        check_model_file(tmp_path / "m.onnx")
