"""The float-outputs pass: a quantized MatMul/Gemm whose output no quantized op reads writes float."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qconvert.model.graph import iter_nodes
from qconvert.quantization.planning import QDQ_OPS, Plan, quantized_names

if TYPE_CHECKING:
    from pathlib import Path

FLOAT_OUTPUT_OPS = frozenset({"MatMul", "Gemm"})  # their integer kernels can write float directly


def free_outputs(path: Path, plan_: Plan) -> int:
    """Drop the Q/DQ pair onnxruntime puts on every output of a quantized MatMul/Gemm that no
    quantized op reads (by `plan_`: its op types, less the nodes it excludes; a graph output is
    read in float). Such a pair only adds rounding, per tensor, across the outlier channels of a
    transformer's residual stream or a classifier's logits. The MatMul/Gemm still reads quantized
    inputs and runs in integers (MatMulIntegerToFloat, QGemm with a float output on CPU). Returns
    how many outputs were freed; the model at `path` is rewritten only when there were some."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    quantized = quantized_names(model)

    def planned(node: onnx.NodeProto) -> bool:
        return node.op_type in plan_.op_types and node.name not in plan_.excluded

    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    # Subgraph bodies may read a main-graph tensor by name: such a tensor keeps its Q/DQ.
    pinned = {i for gn in iter_nodes(graph) if gn.in_subgraph for i in gn.node.input}
    fixed = pinned | outputs  # names the tensor between the op and its Q, or the Q's output, may not have
    dropped: list[onnx.NodeProto] = []
    freed = 0
    for node in graph.node:
        if node.op_type not in FLOAT_OUTPUT_OPS or node.name not in quantized:
            continue
        for index, tensor in enumerate(node.output):
            qs = readers.get(tensor, [])
            if (tensor in fixed or len(qs) != 1 or qs[0].op_type != "QuantizeLinear"
                    or qs[0].output[0] in fixed):
                continue
            dqs = readers.get(qs[0].output[0], [])
            finals = [d.output[0] for d in dqs]
            if (not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or any(f in pinned for f in finals)
                    or sum(f in outputs for f in finals) > 1
                    or any(planned(r) or r.op_type in QDQ_OPS for f in finals for r in readers.get(f, []))):
                continue
            name = next((f for f in finals if f in outputs), tensor)  # a graph output keeps its name
            node.output[index] = name
            for final in finals:
                for reader in readers.get(final, []):
                    reader.input[:] = [name if i == final else i for i in reader.input]
            dropped += [qs[0], *dqs]
            freed += 1
    if freed:
        gone = {id(n) for n in dropped}
        kept = [n for n in graph.node if id(n) not in gone]
        del graph.node[:]
        graph.node.extend(kept)
        used = {i for gn in iter_nodes(graph) for i in gn.node.input} | outputs
        orphans = {i for n in dropped for i in n.input[1:]} - used  # the pairs' scales and zero points
        inits = [t for t in graph.initializer if t.name not in orphans]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        onnx.save(model, str(path))
    return freed
