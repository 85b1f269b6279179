"""Where a quantized model loses its accuracy: per-node and per-tensor error against FP32.

Three runs per sample, accumulated as samples stream (nothing per sample is kept):

- the FP32 model, exposing every intermediate tensor: the reference;
- the quantized model, exposing the same tensors: the *total* error at each tensor, its own
  plus everything carried in from upstream;
- a *local* copy of the quantized graph whose every node reads the FP32 reference values of its
  inputs (the quantized graph's own Q/DQ, weights and integer ops still apply): the error each
  node adds on its own. Its QuantizeLinear/DequantizeLinear pairs, fed FP32 values, also give
  the error of quantizing each activation tensor by itself.

Tensors are matched by name: onnxruntime's quantizers keep the names of the float tensors they
quantize and of the outputs of the ops they replace. Compare a quantized model with the model
it was quantized from (qconvert's accuracy search uses its own prepared copy, so every name
matches); tensors a graph optimizer renamed are counted as unmatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert import progress
from qconvert.calibration import data_for
from qconvert.errors import DataError, ModelError, first_line
from qconvert.measurement.metrics import ErrorSums, nan_lowest
from qconvert.model.files import scratch_dir
from qconvert.model.loading import check_model_file, load_model
from qconvert.providers import cpu_session, quiet_onnxruntime, signature
from qconvert.quantization.ranges import exposing_session
from qconvert.results import AnalyzeResult, NodeError, TensorError

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from qconvert.calibration import CalibrationData
    from qconvert.config import DataConfig

class NothingToCompare(ModelError):
    """No quantized tensor of the main graph matches a tensor of the FP32 one."""


SUFFIX = "::fp32"
OWN = "::own"
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
INTEGER_WEIGHT_AXIS = {"MatMulInteger": -1, "ConvInteger": 0}  # the per-channel axis of their weight


@dataclass(frozen=True)
class _Layout:
    """What the two graphs share and where each quantized tensor's dequantized value appears."""

    common: list[str]  # activation tensors produced in both main graphs, float in FP32
    producers: dict[str, tuple[str, str]]  # tensor -> (FP32 node name, op type)
    activations: dict[str, str]  # quantized activation tensor -> its DequantizeLinear output
    dynamic: dict[str, tuple[str, str, str]]  # tensor -> DynamicQuantizeLinear (y, scale, zero point)
    weights: dict[str, str]  # FP32 weight initializer -> its DequantizeLinear output
    integer_weights: dict[str, tuple[str, str, str, int]]  # FP32 weight -> (quantized, scale, zero point, axis)
    weight_nodes: dict[str, str]  # FP32 weight -> the FP32 node that reads it
    # Where to read each shared tensor in the quantized graphs: itself, or its DequantizeLinear
    # output when the quantizer folded the op that wrote it (a Relu or Clip becomes the range of
    # the QuantizeLinear after the op before it, which then writes the unclipped value).
    compared: dict[str, str]

    @property
    def quantized_tensors(self) -> int:
        return len(self.activations) + len(self.dynamic) + len(self.weights) + len(self.integer_weights)


def _main_graph_producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    return {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)
            if v.type.HasField("tensor_type")}


def _layout(fp32: onnx.ModelProto, quant: onnx.ModelProto) -> _Layout:
    f_producers, q_producers = _main_graph_producers(fp32.graph), _main_graph_producers(quant.graph)
    types = _float_types(fp32)
    common = [t for t in f_producers if t in q_producers and types.get(t) in FLOAT_TYPES]
    f_by_name = {n.name: n for n in fp32.graph.node if n.name}
    producers = {}
    for t in common:
        # The node that computes the tensor in the quantized graph, when it is an FP32 node: the QDQ
        # quantizer folds a Relu into the op before it, which then writes the Relu's output.
        node = f_by_name.get(q_producers[t].name, f_producers[t])
        producers[t] = (node.name or f"<{node.op_type} -> {t}>", node.op_type)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in quant.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    q_inits = {t.name for t in quant.graph.initializer}
    f_inits = {t.name: t for t in fp32.graph.initializer}
    activations: dict[str, str] = {}
    dynamic: dict[str, tuple[str, str, str]] = {}
    weights: dict[str, str] = {}
    integer_weights: dict[str, tuple[str, str, str, int]] = {}
    for node in quant.graph.node:
        if node.op_type in INTEGER_WEIGHT_AXIS and len(node.input) > 3 and node.input[1] in q_inits:
            # onnxruntime's dynamic quantizer names a weight W's parts W_quantized, W_scale, W_zero_point.
            name = node.input[1].removesuffix("_quantized")
            if name in f_inits and name + "_scale" in q_inits:
                integer_weights[name] = (node.input[1], name + "_scale", node.input[3],
                                         INTEGER_WEIGHT_AXIS[node.op_type])
        elif node.op_type == "QuantizeLinear" and node.input[0] not in q_inits:
            dq = next((c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), None)
            if dq is not None and node.input[0] in types:
                activations[node.input[0]] = dq.output[0]
        elif node.op_type == "DynamicQuantizeLinear" and node.input[0] in types:
            dynamic[node.input[0]] = (node.output[0], node.output[1], node.output[2])
        elif node.op_type == "DequantizeLinear" and node.input[0] in q_inits:
            for user in consumers.get(node.output[0], []):
                original = f_by_name.get(user.name)
                index = list(user.input).index(node.output[0])
                if original is not None and index < len(original.input) and original.input[index] in f_inits:
                    weights[original.input[index]] = node.output[0]
                    break
            else:
                name = node.input[0].removesuffix("_quantized")
                if name in f_inits:
                    weights[name] = node.output[0]
    readers = {name: n.name for n in fp32.graph.node for name in n.input if name in f_inits}
    weight_nodes = {w: readers[w] for w in (*weights, *integer_weights) if w in readers}
    compared = {t: activations[t] if t in activations and q_producers[t].op_type != f_producers[t].op_type else t
                for t in common}
    return _Layout(common, producers, activations, dynamic, weights, integer_weights, weight_nodes, compared)


def _session(model: onnx.ModelProto, outputs: list[str], path: Path) -> onnxruntime.InferenceSession:
    """A one-thread CPU session exposing `outputs`, every tensor under its own name."""
    return exposing_session(model, outputs, path, external=True, threads=1,
                            failure=f"onnxruntime cannot load {path.name} for analysis",
                            hint="analyze models onnxruntime runs on the CPU")


def _local_model(quant: onnx.ModelProto, layout: _Layout, types: dict[str, int]) -> onnx.ModelProto:
    """The quantized graph with every node reading the FP32 value of each shared activation."""
    import onnx

    local = onnx.ModelProto()
    local.CopyFrom(quant)
    shared = set(layout.common)
    # A tensor compared after its QuantizeLinear (a folded Relu) is re-quantized from its own local
    # value by a copy of that Q/DQ pair: the original pair now reads the FP32 value, for readers.
    pairs = {n.input[0]: n for n in quant.graph.node if n.op_type == "QuantizeLinear"}
    dequantizers = {n.output[0]: n for n in quant.graph.node if n.op_type == "DequantizeLinear"}
    copies = []
    for t, read in layout.compared.items():
        if read != t and t in pairs and read in dequantizers:
            q, dq = onnx.NodeProto(), onnx.NodeProto()
            q.CopyFrom(pairs[t])
            dq.CopyFrom(dequantizers[read])
            q.name, q.output[0] = f"{q.name}{OWN}", f"{q.output[0]}{OWN}"
            dq.name, dq.input[0], dq.output[0] = f"{dq.name}{OWN}", q.output[0], f"{t}{OWN}"
            copies += [q, dq]
    for node in local.graph.node:
        for i, name in enumerate(node.input):
            if name in shared:
                node.input[i] = name + SUFFIX
    local.graph.node.extend(copies)  # after renaming: the copies read the local values
    local.graph.input.extend(onnx.helper.make_tensor_value_info(name + SUFFIX, types[name], None)
                             for name in layout.common)
    return local


def _own_output(layout: _Layout, t: str) -> str:
    """Where the local model holds tensor `t` as its writer computed it."""
    return f"{t}{OWN}" if layout.compared[t] != t else t


def analyze(fp32_model: str | Path, quantized_model: str | Path, data: CalibrationData | DataConfig, *,
            top: int | None = None, work: Path | None = None, prepare_reference: bool = True) -> AnalyzeResult:
    """Per-node error of `quantized_model` against `fp32_model` on `data` (samples, or the
    configuration that names them), worst own error first.

    The exposing copies of both models go to `work` (kept), or to a temporary folder (removed).
    `prepare_reference=False` says `fp32_model` is already the graph the quantizer saw.
    """
    data = data_for(data, fp32_model)
    if work is None:
        with scratch_dir() as tmp:
            return analyze(fp32_model, quantized_model, data, top=top, work=Path(tmp),
                           prepare_reference=prepare_reference)
    work.mkdir(parents=True, exist_ok=True)
    fp32_path, quant_path = Path(fp32_model), Path(quantized_model)
    quant = load_model(quant_path).owned_copy()
    reference, fp32, layout = _reference(fp32_path, quant, work, prepare_it=prepare_reference)
    if not layout.quantized_tensors:
        raise NothingToCompare(f"{quant_path} has no quantized tensor that matches a tensor of {fp32_path}",
                         hint="compare a quantized model with the FP32 model it was quantized from")
    types = _float_types(fp32)
    weight_errors = _weight_errors(fp32, quant, layout)

    with quiet_onnxruntime():
        ref = _session(fp32, layout.common, work / "fp32.onnx")
        compared = list(dict.fromkeys(layout.compared.values()))
        total = _session(quant, compared, work / "quantized.onnx")
        dq_outputs = list(layout.activations.values()) + [n for y in layout.dynamic.values() for n in y]
        local_outputs = list(dict.fromkeys([_own_output(layout, t) for t in layout.common] + dq_outputs))
        local = _session(_local_model(quant, layout, types), local_outputs, work / "local.onnx")
    if signature(ref.get_inputs()) != signature(total.get_inputs()):
        raise ModelError(f"{quant_path} takes different inputs from {fp32_path}",
                         hint="compare a quantized model with the FP32 model it was quantized from")
    own = {t: ErrorSums() for t in layout.common}
    carried = {t: ErrorSums() for t in layout.common}
    act = {t: ErrorSums() for t in (*layout.activations, *layout.dynamic)}
    samples = 0
    with progress.task("analysis", total=data.expected_samples()) as step:
        for index, sample in enumerate(data):
            try:
                with quiet_onnxruntime():
                    ref_values = dict(zip(layout.common, ref.run(layout.common, sample), strict=True))
                    total_values = dict(zip(compared, total.run(compared, sample), strict=True))
                    feeds = {**sample, **{t + SUFFIX: v for t, v in ref_values.items()}}
                    local_values = dict(zip(local_outputs, local.run(local_outputs, feeds), strict=True))
            except Exception as exc:
                raise DataError(f"analysis failed on sample {index}: {first_line(exc)}",
                                hint="check the data against `qconvert inspect` of the FP32 model") from exc
            for t in layout.common:
                carried[t].add(ref_values[t], total_values[layout.compared[t]])
                own[t].add(ref_values[t], local_values[_own_output(layout, t)])
            known = {**sample, **ref_values}  # graph inputs are quantized too
            for t, dq in layout.activations.items():
                if t in known:
                    act[t].add(known[t], local_values[dq])
            for t, (y, scale, zero) in layout.dynamic.items():
                if t in known:
                    restored = (local_values[y].astype(np.float32) - local_values[zero].astype(np.float32))
                    act[t].add(known[t], restored * local_values[scale])
            samples += 1
            step()
    if samples == 0:
        raise DataError(f"no samples in {data.description}", hint="give non-empty evaluation data")
    return _result(fp32_path, quant_path, reference, data, samples, layout, own, carried, act, weight_errors,
                   top)


def _reference(path: Path, quant: onnx.ModelProto, work: Path, *,
               prepare_it: bool) -> tuple[str, onnx.ModelProto, _Layout]:
    """The FP32 graph whose tensor names match the quantized one best: the model as given (made
    by another tool from this very file), or prepared the way `qconvert quantize` prepares it."""
    from qconvert.quantization.adapter import load_with_shapes
    from qconvert.quantization.preparation import prepare

    candidates = [("as given", path)]
    if prepare_it:
        original = load_model(path).owned_copy()
        static = any(n.op_type == "QuantizeLinear" for n in quant.graph.node)
        with quiet_onnxruntime():
            prepare(original, work / "reference.onnx", optimize=static)
        candidates.append(("prepared like `qconvert quantize`", work / "reference.onnx"))
    else:
        check_model_file(path)  # before onnx reads it (below), external data and all
    found = []
    for label, candidate in candidates:
        model = load_with_shapes(candidate)  # weights and value_info (element types)
        layout = _layout(model, quant)
        found.append((layout.quantized_tensors + len(layout.common), label, model, layout))
    _, label, model, layout = max(found, key=lambda f: f[0])
    return label, model, layout


def _weight_errors(fp32: onnx.ModelProto, quant: onnx.ModelProto, layout: _Layout) -> dict[str, ErrorSums]:
    """Dequantized weights against the FP32 initializers: QDQ weights via one run of their
    DequantizeLinear nodes, integer-op weights as (W - zero point) * scale per channel."""
    from onnx import numpy_helper

    f_inits = {t.name: t for t in fp32.graph.initializer}
    q_inits = {t.name: t for t in quant.graph.initializer}
    restored = _dequantized_weights(quant, layout)
    for name, (qname, scale_name, zero_name, axis) in layout.integer_weights.items():
        w = numpy_helper.to_array(q_inits[qname]).astype(np.float32)
        scale = numpy_helper.to_array(q_inits[scale_name]).astype(np.float32)
        zero = numpy_helper.to_array(q_inits[zero_name]).astype(np.float32) if zero_name in q_inits else 0.0
        shape = [1] * w.ndim
        shape[axis] = -1
        restored[name] = (w - np.reshape(zero, shape)) * np.reshape(scale, shape)
    errors: dict[str, ErrorSums] = {}
    for name, value in restored.items():
        error = ErrorSums()
        error.add(numpy_helper.to_array(f_inits[name]), value)
        errors[name] = error
    return errors


def _dequantized_weights(quant: onnx.ModelProto, layout: _Layout) -> dict[str, np.ndarray]:
    import onnx

    if not layout.weights:
        return {}
    wanted = set(layout.weights.values())
    graph = quant.graph
    nodes = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in wanted]
    needed = {i for n in nodes for i in n.input}
    sub = onnx.helper.make_graph(nodes, "weights", [], [onnx.ValueInfoProto(name=n) for n in sorted(wanted)],
                                 [t for t in graph.initializer if t.name in needed])
    model = onnx.helper.make_model(sub, opset_imports=quant.opset_import, ir_version=quant.ir_version)
    session = cpu_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {}), strict=True))
    return {name: values[dq] for name, dq in layout.weights.items()}


def _result(fp32_path: Path, quant_path: Path, reference: str, data: CalibrationData, samples: int, layout: _Layout,
            own: dict[str, ErrorSums], carried: dict[str, ErrorSums], act: dict[str, ErrorSums],
            weights: dict[str, ErrorSums], top: int | None) -> AnalyzeResult:
    weight_by_node: dict[str, list[str]] = {}
    for name, node in layout.weight_nodes.items():
        weight_by_node.setdefault(node, []).append(name)
    nodes: list[NodeError] = []
    for t in layout.common:
        if own[t].noise == 0.0 and carried[t].noise == 0.0:
            continue
        node, op_type = layout.producers[t]
        own_noise, total_noise = own[t].noise, carried[t].noise
        share = 1.0 - min(1.0, own_noise / total_noise) if total_noise else 0.0
        w = [weights[n] for n in weight_by_node.get(node, [])]
        nodes.append(NodeError(
            node=node, op_type=op_type, tensor=t, own_sqnr_db=own[t].sqnr_db, own_cosine=own[t].cosine,
            total_sqnr_db=carried[t].sqnr_db, total_cosine=carried[t].cosine, carried_share=share,
            weight_sqnr_db=min((e.sqnr_db for e in w), default=None)))
    nodes.sort(key=lambda n: (nan_lowest(n.own_sqnr_db), n.node))
    tensors = [TensorError(name=t, kind="activation", sqnr_db=e.sqnr_db, cosine=e.cosine) for t, e in act.items()]
    tensors += [TensorError(name=n, kind="weight", sqnr_db=e.sqnr_db, cosine=e.cosine) for n, e in weights.items()]
    tensors.sort(key=lambda e: (nan_lowest(e.sqnr_db), e.name))
    return AnalyzeResult(fp32_path=str(fp32_path), quantized_path=str(quant_path), reference=reference,
                         quantized_tensors=layout.quantized_tensors, data=data.to_dict(),
                         samples=samples, matched_tensors=len(layout.common), nodes=nodes[:top] if top else nodes,
                         ranked_nodes=len(nodes), tensors=tensors[:top] if top else tensors)
