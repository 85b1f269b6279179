"""The boundary with onnxruntime's float16 converter (`onnxruntime.transformers.float16`), its only
importer, and the bfloat16 form qconvert derives from what it writes.

The converter rewrites every float32 tensor, initializer and attribute to float16 and puts Casts
around the nodes it is told to keep (by name or op type), and around the model's inputs and outputs
when they stay float32. It needs every tensor typed (ONNX shape inference) to place those casts.
For bfloat16 the same graph is retyped: float16 becomes bfloat16 everywhere, and every converted
constant is rounded again from its float32 original, so no value goes through float16's range.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.model.graph import iter_graphs

FLOAT, FLOAT16, BFLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
# Op types the converter itself leaves in float32 (no float16 version in ONNX, or unsafe in it).
CONVERTER_KEEPS = "onnxruntime's converter keeps this op type in float32"


def converter_block_list() -> frozenset[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return frozenset(DEFAULT_OP_BLOCK_LIST)


def to_float16(model: onnx.ModelProto, *, io_float32: bool, keep_nodes: set[str]) -> onnx.ModelProto:
    """`model` (typed, weights loaded) with every node not in `keep_nodes` in float16, in place.
    The converter's own block list is applied as well."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(
        model, keep_io_types=io_float32, disable_shape_infer=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
        node_block_list=sorted(keep_nodes), force_fp16_initializers=False)
    return converted


def graph_constants(graph: onnx.GraphProto) -> Iterator[tuple[str, np.ndarray]]:
    """A graph's float32 initializers and Constant values with their names (a Constant's output),
    one at a time: a model's weights are never all copied at once."""
    for tensor in graph.initializer:
        if tensor.data_type == FLOAT:
            yield tensor.name, numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    yield node.output[0], numpy_helper.to_array(attr.t)


def bfloat16_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every graph's float32 initializers and Constant values, by name, rounded to bfloat16 (half
    the bytes of keeping them in float32 until `to_bfloat16` needs them)."""
    import ml_dtypes

    return {name: value.astype(ml_dtypes.bfloat16) for graph, _ in iter_graphs(model.graph)
            for name, value in graph_constants(graph)}


def _bfloat16(value: np.ndarray, name: str) -> onnx.TensorProto:
    import ml_dtypes

    return numpy_helper.from_array(value if value.dtype == ml_dtypes.bfloat16 else
                                   value.astype(np.float32).astype(ml_dtypes.bfloat16), name)


def _retyped(tensor: onnx.TensorProto, original: np.ndarray | None) -> onnx.TensorProto:
    value = original if original is not None else numpy_helper.to_array(tensor)
    return _bfloat16(value, tensor.name)


def _attribute_tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.NodeProto, onnx.AttributeProto]]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield node, attr


def to_bfloat16(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A float16 model from `to_float16` retyped to bfloat16, in place: types, Cast targets, dtype
    attributes, and constants taken from their bfloat16 `originals` (see `bfloat16_constants`),
    rounded from float32 and not through float16's range."""
    for graph, _ in iter_graphs(model.graph):
        for i, tensor in enumerate(graph.initializer):
            if tensor.data_type == FLOAT16:
                graph.initializer[i].CopyFrom(_retyped(tensor, originals.get(tensor.name)))
        for value in (*graph.input, *graph.output, *graph.value_info):
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type == FLOAT16:
                tensor_type.elem_type = BFLOAT16
            sequence = value.type.sequence_type.elem_type.tensor_type
            if value.type.HasField("sequence_type") and sequence.elem_type == FLOAT16:
                sequence.elem_type = BFLOAT16
        for node in graph.node:
            for attr in node.attribute:
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT16:
                    attr.i = BFLOAT16
        for node, attr in _attribute_tensors(graph):
            if attr.t.data_type == FLOAT16:
                original = originals.get(node.output[0]) if node.op_type == "Constant" and node.output else None
                attr.t.CopyFrom(_retyped(attr.t, original))
    return model
