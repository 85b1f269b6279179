"""Pre-processing passes that make models from older exporters quantizable.

Each pass takes a ModelProto, changes it in place and returns a `PassResult` saying what it
changed, so the quantize summary can report it and a pass that did nothing says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.config import Mode
from qconvert.errors import UsageError, first_line
from qconvert.model.graph import PROTOBUF_LIMIT, iter_graphs, iter_nodes, iter_scopes, model_nbytes
from qconvert.results import PassResult, PrepareResult

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


def remove_initializer_inputs(model: onnx.ModelProto) -> PassResult:
    """Drop graph inputs that are also initializers (Paddle, Caffe2, IR<4 exporters).

    Such an input is an overridable default; quantizers then refuse to treat it as a weight.
    IR 3 requires every initializer to be a graph input, so the model moves to IR 4, which
    reads the same opsets.
    """
    graph = model.graph
    removed = _initializer_inputs(model)
    if removed:
        inits = {t.name for t in graph.initializer}
        keep = [v for v in graph.input if v.name not in inits]
        del graph.input[:]
        graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return PassResult("remove-initializer-inputs", removed)


def _constant_value(node: onnx.NodeProto, known: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for attr in node.attribute:
            if attr.name == "value":
                tensor: onnx.TensorProto = attr.t
                return tensor
            if attr.name == "value_float":
                return numpy_helper.from_array(np.array(attr.f, np.float32))
            if attr.name == "value_floats":
                return numpy_helper.from_array(np.array(list(attr.floats), np.float32))
            if attr.name == "value_int":
                return numpy_helper.from_array(np.array(attr.i, np.int64))
            if attr.name == "value_ints":
                return numpy_helper.from_array(np.array(list(attr.ints), np.int64))
        return None  # sparse or string constants stay as nodes
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") and node.input[0] in known:
        shape = numpy_helper.to_array(known[node.input[0]]).astype(np.int64)
        fill = np.zeros(1, np.float32)
        for attr in node.attribute:
            if attr.name == "value":
                fill = numpy_helper.to_array(attr.t)
        return numpy_helper.from_array(np.full(tuple(shape), fill.reshape(-1)[0], dtype=fill.dtype))
    if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in known:
        copy = onnx.TensorProto()
        copy.CopyFrom(known[node.input[0]])
        return copy
    return None


def _folds(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> Iterator[tuple[int, onnx.TensorProto]]:
    """(node index, value) for every node of `graph` that computes a constant weight, from its own
    initializers or those of the graphs around it (`outer`)."""
    outputs = {v.name for v in graph.output}
    known = {**outer, **{t.name: t for t in graph.initializer}}
    for index, node in enumerate(graph.node):
        value = _constant_value(node, known) if len(node.output) == 1 and node.output[0] not in outputs else None
        if value is not None:
            known[node.output[0]] = value
            yield index, value


def localize_outer_weights(model: onnx.ModelProto) -> PassResult:
    """Give each subgraph its own copy of the main-graph (outer-scope) weights its quantizable nodes
    read. Recent exporters share one set of weights between If branches this way; onnxruntime's
    quantizer looks for a node's weight in the node's own graph only ("Expected … to be an
    initializer"). A weight no node outside the subgraphs reads any more is removed where it was."""
    from qconvert.quantization.adapter import candidate_op_types

    quantizable = candidate_op_types(Mode.DYNAMIC) | candidate_op_types(Mode.STATIC)
    moved: set[str] = set()
    copies = 0
    for graph, outer in iter_scopes(model.graph):
        if not outer:  # the main graph, or a body with nothing around it to read
            continue
        local = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        local |= {name for node in graph.node for name in node.output}
        taken = {t.name for t in graph.initializer}
        for node in graph.node:
            if node.op_type not in quantizable:
                continue
            for index, name in enumerate(node.input):
                if not name or name in local or name not in outer:
                    continue
                copy = graph.initializer.add()
                copy.CopyFrom(outer[name])
                copy.name = _fresh(f"{name}::{graph.name or 'body'}", taken)
                taken.add(copy.name)
                node.input[index] = copy.name
                moved.add(name)
                copies += 1
    if moved:
        used = {name for gn in iter_nodes(model.graph) for name in gn.node.input}
        used |= {v.name for v in model.graph.output}
        for graph, _ in iter_graphs(model.graph):
            kept = [t for t in graph.initializer if t.name not in moved or t.name in used]
            if len(kept) != len(graph.initializer):
                del graph.initializer[:]
                graph.initializer.extend(kept)
    return PassResult("localize-outer-weights", copies)


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _initializer_inputs(model: onnx.ModelProto) -> int:
    inits = {t.name for t in model.graph.initializer}
    return sum(v.name in inits for v in model.graph.input)


def fold_constants(model: onnx.ModelProto) -> PassResult:
    """Turn Constant / ConstantOfShape / Identity-of-weight nodes into initializers, in every graph
    (an Identity in a subgraph of a main-graph weight too).

    Weights produced by nodes instead of stored as initializers make quantizers fail with
    "Expected … to be an initializer".
    """
    folded = 0
    for graph, outer in iter_scopes(model.graph):
        folds = dict(_folds(graph, outer))
        for index, value in folds.items():
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = graph.node[index].output[0]
        if folds:
            keep = [node for index, node in enumerate(graph.node) if index not in folds]
            del graph.node[:]
            graph.node.extend(keep)
            folded += len(folds)
    return PassResult("fold-constants", folded)


def fix_input_shapes(model: onnx.ModelProto, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> PassResult:
    """Make the named inputs static, and every dim that shares their symbolic names."""
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    names = {v.name for v in model.graph.input}
    for name, dims in shapes:
        if name not in names:
            raise UsageError(f"--fix-shape {name}: the model has no input {name!r}",
                             hint=f"inputs: {', '.join(sorted(names))}")
        try:
            make_input_shape_fixed(model.graph, name, list(dims))
        except ValueError as exc:
            raise UsageError(f"--fix-shape {name}={','.join(map(str, dims))}: {exc}",
                             hint="give one positive size per dim; fixed dims must keep their size") from exc
    return PassResult("fix-input-shapes", len(shapes), ", ".join(f"{n}={list(d)}" for n, d in shapes))


# QuantizeLinear/DequantizeLinear need opset 10 and their per-channel `axis` opset 13;
# onnxruntime's quantizer upgrades old models only to 11 and then writes invalid per-channel nodes.
MIN_OPSET = 13


def upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassResult]:
    """Convert models below opset 13 (Caffe2- and early PyTorch-era exports) to opset 13."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if current >= MIN_OPSET:
        return model, PassResult("upgrade-opset", 0)
    converted = onnx.version_converter.convert_version(model, MIN_OPSET)
    # The converter keeps the old IR version; onnxruntime rejects opset 13 below IR 7.
    converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(
        list(converted.opset_import), ignore_unknown=True))
    return converted, PassResult("upgrade-opset", 1, f"opset {current} -> {MIN_OPSET}")


def _optimize_and_infer(model: onnx.ModelProto, dest: Path, result: PrepareResult, *, optimize: bool) -> bool:
    """onnxruntime's own pre-processing: ONNX shape inference, its symbolic shape inference where
    ONNX's leaves a tensor quantization reads untyped, basic graph optimisation (constant folding,
    Conv+BatchNorm fusion, MatMul+Add → Gemm, opset < 10 upgrade), written to `dest`. Dynamic
    quantization skips the optimisation: it cannot quantize Gemm. False when it failed and nothing
    usable was written."""
    from qconvert.quantization.adapter import pre_process

    symbolic = _needs_symbolic_shapes(model)
    source: onnx.ModelProto | Path = model
    if not symbolic:
        # Handed a ModelProto with nothing else to change first, onnxruntime's pre-processing gives its
        # optimiser every weight as an external initializer, and the optimised model then keeps even
        # Unsqueeze axes external, where shape inference cannot read them: give it a file.
        source = dest.with_name("unprepared.onnx")
        save_with_sidecar(model, source)
    try:
        pre_process(source, dest, optimize=optimize, symbolic=symbolic, sidecar=_sidecar(dest))
    except Exception as exc:
        result.warnings.append(f"onnxruntime pre-processing failed ({first_line(exc)}); "
                               "used ONNX shape inference only")
        log.debug("quant_pre_process failed", exc_info=True)
        return False
    result.passes.append(PassResult("onnxruntime-pre-process", 1, ("symbolic shapes, " if symbolic else "")
                                    + "ONNX shapes" + (", basic graph optimisation" if optimize else "")))
    return True


def _needs_symbolic_shapes(model: onnx.ModelProto) -> bool:
    """Whether ONNX's shape inference (C++: milliseconds) leaves the element type of a tensor that a
    quantizable node reads or writes unknown. Only then is onnxruntime's symbolic shape inference
    worth its cost: it is pure Python (0.15 s without it, 20 s with it on PP-OCRv4's detector)."""
    import onnx

    from qconvert.quantization.adapter import candidate_op_types

    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001 - ONNX's inference failed: the symbolic one may do better
        return True
    typed = {v.name for v in (*graph.value_info, *graph.input, *graph.output) if v.type.tensor_type.elem_type}
    typed |= {t.name for t in graph.initializer}
    quantizable = candidate_op_types(Mode.STATIC)
    return any(name and name not in typed for node in graph.node if node.op_type in quantizable
               for name in (*node.input, *node.output))


def _infer_shapes(model: onnx.ModelProto, result: PrepareResult) -> onnx.ModelProto:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        result.passes.append(PassResult("onnx-shape-inference", 1))
        return inferred
    except Exception as exc:  # noqa: BLE001 - shape inference is best effort
        result.warnings.append(f"ONNX shape inference failed: {str(exc).splitlines()[0] if str(exc) else exc}")
        return model


def flatten_row_biases(model: onnx.ModelProto) -> PassResult:
    """Gemm biases of shape [1, N] become [N]: the same bytes and the same broadcast. onnxruntime's
    optimiser fuses a MatMul and the Add of a [1, N] bias (tf2onnx's dense layers) into such a Gemm,
    and its QDQ quantizer, scaling per-channel weights for an int32 bias, then indexes a row where it
    expects a number. Only biases that no other node reads are changed."""
    readers: dict[str, list[tuple[str, int]]] = {}
    for gn in iter_nodes(model.graph):
        for index, name in enumerate(gn.node.input):
            readers.setdefault(name, []).append((gn.node.op_type, index))
    changed = 0
    for graph, _ in iter_graphs(model.graph):
        for init in graph.initializer:
            uses = readers.get(init.name, [])
            if len(init.dims) == 2 and init.dims[0] == 1 and uses and all(use == ("Gemm", 2) for use in uses):
                init.dims[:] = [init.dims[1]]
                for info in graph.value_info:
                    if info.name == init.name:
                        del info.type.tensor_type.shape.dim[0]
                changed += 1
    return PassResult("flatten-gemm-row-biases", changed)


def _sidecar(dest: Path) -> str:
    return dest.name + ".data"


def save_with_sidecar(model: onnx.ModelProto, dest: Path) -> None:
    """Save `model` to `dest` with every weight in one `<dest>.data` file beside it (any size, even > 2 GB)."""
    import onnx

    onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=_sidecar(dest), convert_attribute=False)


def prepare(model: onnx.ModelProto, dest: Path, *, enabled: bool = True, optimize: bool = True,
            fixed_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> tuple[onnx.ModelProto, PrepareResult]:
    """Write the model, pre-processed when `enabled`, to `dest` (weights in a `.data` file beside it)
    and return its graph without weight data, for planning. `model` is consumed: the passes change
    it and saving moves its weights out (`LoadedModel.owned_copy()` gives one to pass).

    `optimize` adds onnxruntime's basic graph optimisation (right for static QDQ); `fixed_shapes`
    makes those inputs static, with or without the other passes."""
    import onnx

    result = PrepareResult()
    if fixed_shapes:
        result.passes.append(fix_input_shapes(model, fixed_shapes))
    if not enabled:
        save_with_sidecar(model, dest)
        return onnx.load(str(dest), load_external_data=False), result
    result.passes.append(remove_initializer_inputs(model))
    result.passes.append(fold_constants(model))
    result.passes.append(localize_outer_weights(model))
    try:
        model, upgraded = upgrade_opset(model)
        result.passes.append(upgraded)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare exceptions on unsupported ops
        result.warnings.append(f"could not upgrade to opset {MIN_OPSET} ({str(exc).strip().splitlines()[0]}); "
                               "per-channel quantization may fail")
    if model_nbytes(model) >= PROTOBUF_LIMIT:
        result.warnings.append("model over 2 GB: skipped onnxruntime graph optimisation and shape inference")
        save_with_sidecar(model, dest)
    elif not _optimize_and_infer(model, dest, result, optimize=optimize):
        save_with_sidecar(_infer_shapes(model, result), dest)
    prepared = onnx.load(str(dest), load_external_data=False)
    if optimize:
        flattened = flatten_row_biases(prepared)
        result.passes.append(flattened)
        if flattened.changed:
            onnx.save(prepared, str(dest))  # only dims changed: the sidecar's bytes stay as they are
    return prepared, result
