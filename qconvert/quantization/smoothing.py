"""SmoothQuant-style scale migration: move activation outliers into the weights before static QDQ.

Transformers carry a few activation channels 10-100x larger than the rest (LayerNorm and GELU
outputs). Quantized per tensor, those channels set the scale and the others lose their bits;
weights, quantized per channel, have room to spare. For every MatMul with a constant 2-D weight
W [K, N] reading activation X [..., K], per input channel k:

    s_k = max|X_k| ** alpha / max_n |W_kn| ** (1 - alpha)
    X W = (X / s) (diag(s) W)

X / s is one float Mul inserted on the MatMul's side only (a residual path that also reads X
keeps the original), and diag(s) W is folded into the weight. MatMuls that read the same X share
one s (the max of their weights). max|X_k| comes from the calibration data, streamed.
Reference: Xiao et al., "SmoothQuant" (2023); alpha = 0.5 is their default for BERT-sized models.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.quantization.ranges import channel_absmax

if TYPE_CHECKING:
    import onnx

    from qconvert.calibration import CalibrationData

SCALE_LIMITS = (1e-4, 1e4)


def _targets(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the MatMuls with a constant 2-D weight that read it."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[0] in inits or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT:
            found.setdefault(node.input[0], []).append(node)
    return found


def _fold_into_producer(model: onnx.ModelProto, producer: onnx.NodeProto | None, inverse: np.ndarray,
                        readers: dict[str, int]) -> bool:
    """Fold X / s into the op that writes X when its output is linear in a constant it alone reads:
    a Mul by a constant (GELU's final x 0.5), or LayerNormalization's scale and bias over the last
    axis. Returns False (nothing changed) otherwise."""
    from onnx import numpy_helper

    if producer is None:
        return False
    inits = {t.name: t for t in model.graph.initializer}
    if producer.op_type == "Mul":
        slots = [1] if producer.input[1] in inits else [0] if producer.input[0] in inits else []
    elif producer.op_type == "LayerNormalization":
        axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
        slots = [i for i in (1, 2) if i < len(producer.input) and producer.input[i]] if axis == -1 else []
        if any(producer.input[i] not in inits for i in slots):
            return False
    else:
        return False
    values = [numpy_helper.to_array(inits[producer.input[i]]) for i in slots if producer.input[i] in inits]
    if not slots or any(v.size not in (1, inverse.size) or (v.ndim > 1 and v.shape[-1] != v.size) for v in values):
        return False
    for i, value in zip(slots, values, strict=True):
        alone = readers.get(producer.input[i], 0) == 1
        name = producer.input[i] if alone else f"{producer.input[i]}::smoothed::{producer.name}"
        folded = numpy_helper.from_array((value.reshape(-1) * inverse).astype(np.float32), name)
        if alone:
            inits[producer.input[i]].CopyFrom(folded)
        else:
            model.graph.initializer.append(folded)
            producer.input[i] = folded.name
    return True


def smooth(model_path: Path, data: CalibrationData, work: Path, *, alpha: float = 0.5) -> int:
    """Rewrite the model at `model_path` (weights in its sidecar) in place; return how many MatMuls
    were smoothed."""
    import onnx
    from onnx import numpy_helper

    from qconvert.quantization.preparation import save_with_sidecar

    model = onnx.load(str(model_path))
    targets = _targets(model)
    if not targets:
        return 0
    absmax = channel_absmax(model, list(targets), data, work)
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    smoothed = 0
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    positions = {id(n): i for i, n in enumerate(model.graph.node)}
    producers = {out: n for n in model.graph.node for out in n.output}
    for tensor, matmuls in targets.items():
        x_max = absmax.get(tensor)
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m in matmuls]
        if x_max is None or any(w.shape[0] != x_max.shape[0] for w in weights):
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.power(x_max, alpha) / np.power(w_max, 1.0 - alpha)
        scale = np.where(np.isfinite(scale) & (x_max > 0) & (w_max > 0), scale, 1.0)
        scale = np.clip(scale, *SCALE_LIMITS).astype(np.float32)
        inverse = (1.0 / scale).astype(np.float32)
        if readers[tensor] == len(matmuls) and _fold_into_producer(model, producers.get(tensor), inverse, readers):
            scaled = tensor  # the producer now writes X / s itself: no extra op
        else:
            factor = numpy_helper.from_array(inverse, f"{tensor}::smooth_inverse")
            model.graph.initializer.append(factor)
            scaled = f"{tensor}::smoothed"
            mul = onnx.helper.make_node("Mul", [tensor, factor.name], [scaled], name=f"{tensor}::smooth")
            new_nodes.append((min(positions[id(m)] for m in matmuls), mul))
        for matmul, weight in zip(matmuls, weights, strict=True):
            name = matmul.input[1]
            folded = numpy_helper.from_array((weight * scale[:, None]).astype(np.float32),
                                             name if readers[name] == 1 else f"{name}::smoothed::{matmul.name}")
            if readers[name] == 1:
                inits[name].CopyFrom(folded)
            else:
                model.graph.initializer.append(folded)
                matmul.input[1] = folded.name
            matmul.input[0] = scaled
            smoothed += 1
    for position, mul in sorted(new_nodes, key=lambda p: -p[0]):  # back to front keeps positions valid
        model.graph.node.insert(position, mul)
    save_with_sidecar(model, model_path)
    return smoothed
