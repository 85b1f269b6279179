"""Models from quantization-aware training: a QDQ graph whose weights are still stored as float
behind QuantizeLinear → DequantizeLinear, with the scales and zero points training chose.

`qat_weights` finds them (through the Identity nodes exporters put on shared constants), and
`fold_qat` stores each as the integers its QuantizeLinear would compute — x / scale rounded half to
even, plus the zero point, saturated, exactly as onnxruntime computes it — read by the same
DequantizeLinear. Nothing is recalibrated: the outputs are the QAT graph's, at a quarter of the bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.config import Mode, QuantizeConfig, Target
from qconvert.errors import NothingQuantizedError
from qconvert.model.files import check_output_path, move_into_place, save_model, staging_dir
from qconvert.model.graph import PROTOBUF_LIMIT, iter_graphs, model_nbytes, sort_nodes
from qconvert.model.loading import LoadedModel
from qconvert.providers import check_loads
from qconvert.quantization.preparation import fix_input_shapes
from qconvert.results import OpTypeCount, QuantizeResult, SkippedNode

FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
# Integer types QuantizeLinear writes, with their ranges.
INTEGER_RANGES: dict[int, tuple[int, int]] = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
                  onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535),
                  onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}
BITS: dict[int, int] = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
        onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}


@dataclass(frozen=True)
class QatWeight:
    """A float weight behind a QuantizeLinear in `graph` (its path), read by `readers` (the op types
    its DequantizeLinear feeds), with the zero point's type and why it cannot be folded, if so."""

    quantize: onnx.NodeProto
    graph: onnx.GraphProto
    where: str
    weight: str  # the float constant the QuantizeLinear reads
    readers: tuple[str, ...]
    element: int  # the integer type (the zero point's, or QuantizeLinear's default uint8)
    problem: str | None = None


class _Constants:
    """A graph's constants by name: initializers and Constant outputs, seen through Identity nodes."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.tensors: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.aliases: dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.tensors[node.output[0]] = value
            elif node.op_type == "Identity" and node.input and node.output:
                self.aliases[node.output[0]] = node.input[0]

    def source(self, name: str) -> str | None:
        """The constant `name` is (following Identity nodes), or None for a computed tensor."""
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name if name in self.tensors else None

    def value(self, name: str) -> np.ndarray | None:
        found = self.source(name)
        return None if found is None else numpy_helper.to_array(self.tensors[found])


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _element(node: onnx.NodeProto, constants: _Constants) -> int:
    if len(node.input) > 2 and node.input[2]:
        source = constants.source(node.input[2])
        if source is not None:
            return constants.tensors[source].data_type
    return _attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8


def qat_weights(model: onnx.ModelProto) -> list[QatWeight]:
    """Every float constant a QuantizeLinear reads whose output only DequantizeLinear nodes read, in
    every graph (a weight of a QAT export)."""
    found: list[QatWeight] = []
    for graph, where in iter_graphs(model.graph):
        constants = _Constants(graph)
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for node in graph.node:
            if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
                continue
            source = constants.source(node.input[0])
            if source is None or constants.tensors[source].data_type not in FLOATS:
                continue  # an activation's
            dequantizers = readers.get(node.output[0], [])
            if not dequantizers or any(d.op_type != "DequantizeLinear" for d in dequantizers):
                continue
            ops = tuple(sorted({r.op_type for d in dequantizers for r in readers.get(d.output[0], [])}))
            element = _element(node, constants)
            problem = None
            if element not in INTEGER_RANGES:
                problem = f"{onnx.TensorProto.DataType.Name(element).lower()} weights are not folded (integers only)"
            elif constants.source(node.input[1]) is None or (
                    len(node.input) > 2 and node.input[2] and constants.source(node.input[2]) is None):
                problem = "its scale or zero point is computed, not a constant"
            found.append(QatWeight(node, graph, where, source, ops, element, problem))
    return found


def activation_pairs(model: onnx.ModelProto) -> int:
    """QuantizeLinear → DequantizeLinear pairs on computed tensors (activations), in every graph."""
    pairs = 0
    for graph, _ in iter_graphs(model.graph):
        constants = _Constants(graph)
        dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        pairs += sum(1 for n in graph.node if n.op_type == "QuantizeLinear" and constants.source(n.input[0]) is None
                     and n.output[0] in dequantized)
    return pairs


def describe_qat(model: onnx.ModelProto) -> dict[str, object] | None:
    """What `inspect` shows of a QAT export: float weights behind Q/DQ, activation pairs, bit widths;
    None when no weight is stored float behind a QuantizeLinear."""
    weights = qat_weights(model)
    if not weights:
        return None
    return {"float_weights": len(weights), "foldable": sum(1 for w in weights if w.problem is None),
            "activation_pairs": activation_pairs(model),
            "bits": sorted({BITS[w.element] for w in weights if w.element in BITS})}


def _broadcast(param: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """A per-tensor, per-axis or blocked scale or zero point shaped to broadcast against the weight."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    axis = axis % len(shape)
    if block:
        return np.repeat(param, block, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = param.size
    return param.reshape(view)


def _unsaturated(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, *, axis: int,
                 block: int) -> np.ndarray:
    """round_half_even(x / scale) + zero_point in float32 division, as onnxruntime computes it, before
    saturation (float64, exact for any integer type's range)."""
    x = weight.astype(np.float32)
    q: np.ndarray = np.rint(x / _broadcast(scale.astype(np.float32), x.shape, axis, block)).astype(np.float64)
    if zero_point is not None:
        q += _broadcast(zero_point.astype(np.float64), x.shape, axis, block)
    return q


def quantized_values(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, element: int, *,
                     axis: int = 1, block: int = 0) -> np.ndarray:
    """What QuantizeLinear computes: saturate(round_half_even(x / scale) + zero_point), as int64."""
    return _saturated(_unsaturated(weight, scale, zero_point, axis=axis, block=block), element)


def _saturated(values: np.ndarray, element: int) -> np.ndarray:
    low, high = INTEGER_RANGES[element]
    clipped: np.ndarray = np.clip(values, low, high).astype(np.int64)
    return clipped


def _integer_tensor(values: np.ndarray, element: int, name: str) -> onnx.TensorProto:
    if element in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        import ml_dtypes

        typed = values.astype(ml_dtypes.int4 if element == onnx.TensorProto.INT4 else ml_dtypes.uint4)
    else:
        typed = values.astype(onnx.helper.tensor_dtype_to_np_dtype(element))
    return numpy_helper.from_array(typed, name)


def _fold(w: QatWeight, constants: _Constants) -> int:
    """Replace the QuantizeLinear of `w` by the integers it computes, stored under its output's name;
    returns how many were clamped (weights training left beyond the grid)."""
    node = w.quantize
    weight = constants.value(node.input[0])
    scale = constants.value(node.input[1])
    zero = constants.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    assert weight is not None and scale is not None
    exact = _unsaturated(weight, scale, zero, axis=_attr(node, "axis", 1), block=_attr(node, "block_size", 0))
    values = _saturated(exact, w.element)
    w.graph.node.remove(node)
    w.graph.initializer.append(_integer_tensor(values, w.element, node.output[0]))
    return int(np.count_nonzero(values != exact))


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove what nothing reads any more: float weights, their Identity and Constant nodes."""
    while True:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        read |= {name for n in graph.node for a in n.attribute for g in (a.g, *a.graphs)
                 for name in _reads_of(g)}
        dead = [n for n in graph.node if n.op_type in ("Identity", "Constant") and not any(o in read for o in n.output)]
        unused = [t for t in graph.initializer if t.name not in read]
        if not dead and not unused:
            return
        for node in dead:
            graph.node.remove(node)
        for tensor in unused:
            graph.initializer.remove(tensor)


def _reads_of(graph: onnx.GraphProto) -> Iterator[str]:
    for inner, _ in iter_graphs(graph):
        for node in inner.node:
            yield from node.input


# Ops that move or select values without changing them: their output lies on their input's grid.
GRID_KEEPING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})


def _complete_units(graph: onnx.GraphProto) -> int:
    """For NPUs that run an op only as a whole DQ → op → Q unit (QNN): a value-moving op that reads a
    DequantizeLinear and that no QuantizeLinear follows gets a Q/DQ pair on its output, on its
    input's grid (what it computes already lies there). Returns how many."""
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    done = 0
    for node in list(graph.node):
        source = producers.get(node.input[0]) if node.input else None
        out = node.output[0] if node.output else ""
        if node.op_type not in GRID_KEEPING or source is None or source.op_type != "DequantizeLinear" or \
                out in outputs or any(r.op_type == "QuantizeLinear" for r in readers.get(out, [])):
            continue
        grid = list(source.input[1:])
        quantized, dequantized = out + "_quantized", out + "_dequantized"
        graph.node.extend([onnx.helper.make_node("QuantizeLinear", [out, *grid], [quantized], name=quantized),
                           onnx.helper.make_node("DequantizeLinear", [quantized, *grid], [dequantized],
                                                 name=dequantized)])
        for reader in readers.get(out, []):
            for i, name in enumerate(reader.input):
                if name == out:
                    reader.input[i] = dequantized
        done += 1
    return done


def _quantize_biases(graph: onnx.GraphProto) -> int:
    """For NPUs that run no float bias (QNN's HTP): each float bias of a Conv or Gemm whose input and
    weight come out of DequantizeLinear becomes int32 behind a DequantizeLinear, at input scale times
    weight scale (per output channel), as onnxruntime's quantizer writes biases. Returns how many."""
    constants = _Constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    done = 0
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        x, w = producers.get(node.input[0]), producers.get(node.input[1])
        bias = constants.value(node.input[2])
        if x is None or w is None or bias is None or x.op_type != "DequantizeLinear" or \
                w.op_type != "DequantizeLinear" or bias.dtype != np.float32:
            continue
        x_scale, w_scale = constants.value(x.input[1]), constants.value(w.input[1])
        if x_scale is None or w_scale is None or x_scale.size != 1 or w_scale.size not in (1, bias.size):
            continue
        transposed = node.op_type == "Gemm" and _attr(node, "transB", 0) == 0
        if w_scale.size > 1 and _attr(w, "axis", 1) % 2 != (1 if transposed else 0):
            continue  # scales along the input channels: no per-output-channel bias scale
        scale = (x_scale.astype(np.float32).reshape(()) * w_scale.astype(np.float32)).reshape(-1)
        values = np.clip(np.rint(bias / np.broadcast_to(scale, bias.shape)), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.input[2] + "_int32"
        graph.initializer.extend([numpy_helper.from_array(values, name),
                                  numpy_helper.from_array(scale.astype(np.float32), name + "_scale")])
        graph.node.append(onnx.helper.make_node("DequantizeLinear", [name, name + "_scale"], [name + "_dequantized"],
                                                name=name + "_DequantizeLinear", axis=0))
        node.input[2] = name + "_dequantized"
        done += 1
    return done


def fold_qat(loaded: LoadedModel, output: str | Path, *, config: QuantizeConfig, force: bool = False) -> QuantizeResult:
    """Write `loaded` (a QAT export) into `output` with every foldable float weight behind Q/DQ
    stored as its integers; the activations' Q/DQ and every scale stay as training chose them."""
    out = Path(output)
    check_output_path(out, inputs=(loaded.path,), force=force)
    started = time.perf_counter()
    proto = loaded.owned_copy()
    found = qat_weights(proto)
    op_types: dict[str, OpTypeCount] = {}
    skipped: list[SkippedNode] = []
    clamped = folded = 0
    by_graph: dict[int, _Constants] = {}
    for w in found:
        op = "/".join(w.readers) or "DequantizeLinear"
        counts = op_types.setdefault(op, OpTypeCount())
        counts.candidates += 1
        if w.problem is not None:
            skipped.append(SkippedNode(w.quantize.name or w.weight, op, w.where, w.problem))
            continue
        constants = by_graph.setdefault(id(w.graph), _Constants(w.graph))
        clamped += _fold(w, constants)
        counts.quantized += 1
        folded += 1
    if not folded:
        raise NothingQuantizedError(f"no float weight of {loaded.path} behind QuantizeLinear can be folded",
                                    hint="no output was written", details=tuple(sorted({s.reason for s in skipped})))
    warnings = ["a QAT export: its weights were folded with the scales training chose, and nothing was calibrated"]
    if config.target is Target.QNN or not config.float_outputs:  # an NPU that runs whole Q/DQ node units
        why = "--target qnn" if config.target is Target.QNN else "--quantize-all-outputs (an NPU provider)"
        units = _complete_units(proto.graph)
        biases = _quantize_biases(proto.graph)
        warnings.append(f"{why}: {units} value-moving op(s) given a Q/DQ pair on their input's grid (node units), "
                        f"{biases} float bias(es) of Conv/Gemm stored as int32 at input × weight scale (QNN's and "
                        "Vitis AI's NPUs run no float bias); every other Q/DQ stays as training placed it")
        sort_nodes(proto.graph)
    for graph, _ in iter_graphs(proto.graph):
        _drop_unused(graph)
    passes = [fix_input_shapes(proto, config.fixed_shapes).to_dict()] if config.fixed_shapes else []
    if clamped:
        warnings.append(f"{clamped} weight value(s) lay beyond their integer range and were saturated, as the QAT "
                        "graph's QuantizeLinear does")
    external = loaded.uses_external_data or model_nbytes(proto) >= PROTOBUF_LIMIT
    with staging_dir(out) as work:
        staged = work / out.name
        save_model(proto, staged, external=external)
        check_loads(staged, failure="onnxruntime cannot load the folded QAT model",
                    hint="report the model; no output was written")
        bytes_after = move_into_place(staged, out)
    seconds = time.perf_counter() - started
    return QuantizeResult(
        input_path=str(loaded.path), output_path=str(out), mode=Mode.QAT,
        mode_reason="float weights behind QuantizeLinear (a QAT export)",
        config={**config.to_dict(), "mode": Mode.QAT.value}, data=None, calibration_samples=0,
        op_types=op_types, skipped=skipped, bytes_before=loaded.file_bytes, bytes_after=bytes_after,
        prepare_seconds=0.0, calibration_seconds=0.0, quantization_seconds=seconds,
        preprocess={"passes": passes, "warnings": []} if passes else None, warnings=warnings)

