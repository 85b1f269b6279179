"""`inspect`: what a model is, what it holds, and what qconvert could quantize in it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from qconvert.config import Mode
from qconvert.model.decoder import decoder_signature
from qconvert.model.graph import all_initializers, iter_nodes, tensor_nbytes, tensor_numel
from qconvert.model.loading import LoadedModel, input_specs, load_model, output_specs
from qconvert.quantization.adapter import candidate_op_types
from qconvert.quantization.planning import quantization_kinds
from qconvert.quantization.qat import describe_qat
from qconvert.quantization.weight_only import bytes_by_role, slow_nodes, weight_nodes
from qconvert.results import InspectResult


def describe(model: str | Path | LoadedModel) -> InspectResult:
    import onnx

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    proto = loaded.proto
    nodes = list(iter_nodes(proto.graph))
    histogram = Counter(n.node.op_type for n in nodes)
    params: dict[str, dict[str, int]] = {}
    for tensor in all_initializers(proto):
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        entry = params.setdefault(dtype, {"count": 0, "bytes": 0})
        entry["count"] += tensor_numel(tensor)
        entry["bytes"] += tensor_nbytes(tensor)
    candidates = {
        mode.value: {op: n for op, n in sorted(histogram.items()) if op in candidate_op_types(mode)}
        for mode in (Mode.STATIC, Mode.DYNAMIC)
    }
    candidates[Mode.WEIGHT_ONLY.value] = dict(sorted(Counter(n.op_type for n in weight_nodes(proto)).items()))
    decoder = decoder_signature(proto, loaded.path)
    return InspectResult(
        path=str(loaded.path), ir_version=proto.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        producer=" ".join(x for x in (proto.producer_name, proto.producer_version) if x),
        inputs=[s.to_dict() for s in input_specs(proto)], outputs=[s.to_dict() for s in output_specs(proto)],
        op_types=dict(histogram.most_common()), subgraph_nodes=sum(1 for n in nodes if n.in_subgraph),
        parameters=params, external_data=loaded.uses_external_data, file_bytes=loaded.file_bytes,
        quantization=quantization_kinds(proto), candidates=candidates,
        decoder=decoder.to_dict() if decoder else None, bytes_by_role=bytes_by_role(proto) if decoder else None,
        slow_nodes=slow_nodes(proto), qat=describe_qat(proto),
    )

