"""Planning: which nodes are candidates for quantization, which stay in float and why, and which
nodes onnxruntime quantized, read back from its output."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qconvert.config import Mode, QuantizeConfig
from qconvert.errors import ModelError
from qconvert.model.graph import all_initializers, iter_graphs, iter_nodes
from qconvert.quantization.adapter import candidate_op_types

if TYPE_CHECKING:
    import onnx

    from qconvert.model.loading import LoadedModel

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                         "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization",
                         "QGemm"})


STATIC_SUBGRAPH_REASON = "in a subgraph: onnxruntime's QDQ quantizer does not enter If/Loop/Scan bodies"


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
WEIGHT_ONLY_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized", "MatMulBnb4"})


def quantization_kinds(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes that show a model is already quantized, by format."""
    kinds = {"qdq": 0, "qoperator": 0, "integer": 0, "weight_only": 0}
    for gn in iter_nodes(model.graph):
        op = gn.node.op_type
        if op in WEIGHT_ONLY_OPS:
            kinds["weight_only"] += 1
        elif op in QDQ_OPS:
            kinds["qdq"] += 1
        elif op in INTEGER_OPS:
            kinds["integer"] += 1
        elif op.startswith("QLinear"):
            kinds["qoperator"] += 1
    return kinds


def refuse_quantized(model: LoadedModel, why: str = "", *, hint: str = "quantize the FP32 original instead") -> None:
    """A ModelError when `model` is already quantized, naming its quantized nodes by format."""
    kinds = quantization_kinds(model.proto)
    if any(kinds.values()):
        found = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        raise ModelError(f"{model.path} is already quantized ({found} nodes)" + (f": {why}" if why else ""),
                         hint=hint)


@dataclass(frozen=True)
class Candidate:
    name: str
    op_type: str
    graph: str  # '' for the main graph
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Which nodes are candidates, which the user excluded, and the resulting onnxruntime lists."""

    mode: Mode
    subgraphs: bool
    candidates: list[Candidate]
    excluded: dict[str, str]  # node name -> reason
    op_types: list[str]
    constants: frozenset[str]  # initializer names in every graph

    @property
    def nodes_to_exclude(self) -> list[str]:
        return sorted(self.excluded)

    @property
    def subgraph_candidates(self) -> list[str]:
        return [c.name for c in self.candidates if c.graph and c.name not in self.excluded]

    @property
    def main_candidates(self) -> list[str]:
        """Candidates of the main graph to quantize: what static QDQ has to do."""
        return [c.name for c in self.candidates if not c.graph and c.name not in self.excluded]


def _non_float_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors whose known element type is not floating point (shape arithmetic, indices, masks)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    graph = model.graph
    typed = [(v.name, v.type.tensor_type.elem_type) for v in (*graph.value_info, *graph.input, *graph.output)]
    typed += [(t.name, t.data_type) for t in all_initializers(model)]
    return {name for name, elem in typed if elem and elem not in floats}


def plan(model: onnx.ModelProto, mode: Mode, config: QuantizeConfig, subgraphs: bool) -> Plan:
    """Candidates are nodes of a quantizable op type whose data input is floating point: a Gather
    over an int64 shape is plumbing, not something quantization could shrink or speed up."""
    defaults = candidate_op_types(mode)
    non_float = _non_float_tensors(model)
    wanted = set(config.op_types) if config.op_types else set(defaults)
    op_types = sorted((wanted & defaults if not config.op_types else wanted) - set(config.exclude_op_types))
    candidates: list[Candidate] = []
    excluded: dict[str, str] = {}
    for gn in iter_nodes(model.graph):
        node = gn.node
        if (node.op_type not in defaults and node.op_type not in wanted) or (node.input and node.input[0] in non_float):
            continue
        name = node.name or f"<unnamed {node.op_type}>"
        candidates.append(Candidate(name, node.op_type, gn.graph_path, tuple(node.input)))
        pattern = next((p for p in config.exclude_nodes if fnmatch.fnmatchcase(name, p)), None)
        if pattern is not None:
            excluded[name] = f"excluded by --exclude-nodes {pattern}"
        elif node.op_type in config.exclude_op_types:
            excluded[name] = "excluded by --exclude-op-types"
        elif node.op_type not in op_types:
            excluded[name] = "op type not in --op-types"
        elif gn.in_subgraph and not subgraphs:
            excluded[name] = "in a subgraph (--no-subgraphs)"
    constants = frozenset(t.name for t in all_initializers(model))
    return Plan(mode, subgraphs, candidates, excluded, op_types, constants)


def quantized_names(model: onnx.ModelProto) -> set[str]:
    """Names of the original nodes onnxruntime quantized, recovered from the quantized graph.

    Dynamic quantization renames `X` to `X_quant` with an integer op. QDQ keeps a node's name:
    a weighted op is quantized when its data and weight both come from DequantizeLinear, any
    other op when it reads a dequantized input and its output is quantized again.
    """

    names: set[str] = set()

    for graph, _ in iter_graphs(model.graph):
        producers = {out: n.op_type for n in graph.node for out in n.output}
        requantized = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
        for node in graph.node:
            from_dq = [producers.get(i) in ("DequantizeLinear", "DynamicQuantizeLinear") for i in node.input]
            if node.op_type in INTEGER_OPS or node.op_type.startswith("QLinear"):
                names.add(node.name.removesuffix("_quant"))
            elif node.op_type in WEIGHTED_OPS:
                if len(from_dq) > 1 and from_dq[0] and from_dq[1]:
                    names.add(node.name)
            elif node.op_type not in QDQ_OPS and any(from_dq) and any(o in requantized for o in node.output):
                names.add(node.name)
    return names


def skip_reason(c: Candidate, plan_: Plan) -> str:
    if c.name in plan_.excluded:
        return plan_.excluded[c.name]
    if c.graph and plan_.mode is Mode.STATIC:
        if not plan_.subgraphs:
            return STATIC_SUBGRAPH_REASON
        if c.op_type not in candidate_op_types(Mode.DYNAMIC):
            return "in a subgraph: only dynamically quantizable ops (MatMul, Conv, Gather, …) are quantized there"
    if plan_.mode is Mode.DYNAMIC:
        weight = {"MatMul": 1, "Gather": 0}.get(c.op_type)
        if weight is not None and len(c.inputs) > weight and c.inputs[weight] not in plan_.constants:
            return f"{c.op_type} without a constant weight (dynamic mode quantizes weights only)"
        if c.op_type == "Transpose":
            return "Transpose of a float activation (dynamic mode quantizes it only after a quantized op)"
    return "left in float by onnxruntime (input not quantized or not float, or unsupported here)"
