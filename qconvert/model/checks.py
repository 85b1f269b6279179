"""Is this file a model qconvert (and onnxruntime) can work on? Checks done before any work.

`onnx.load` of a 0-byte file returns an empty model, and `onnx.checker.check_model(full_check=True)`
passes a 125-byte model that asks for a 160 GB tensor, imports opset 99, calls unknown custom
ops or holds NaN weights. These checks refuse all of that with one line naming the file and the
tensor, node or opset at fault. They are fast: no copy of the weights is made beyond the one
protobuf hands out per tensor, and values are checked in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ModelError
from qconvert.model.external import CHUNK_BYTES, MAX_TOTAL_BYTES, ExternalPlan, element_bits, expected_bytes
from qconvert.model.graph import iter_bodies, iter_graphs

if TYPE_CHECKING:
    import onnx

# Operator domains onnxruntime implements itself (onnxruntime.capi.onnxruntime_pybind11_state.
# get_all_operator_schema() of 1.32 lists '', ai.onnx.ml, com.microsoft, com.microsoft.nchwc and
# com.ms.internal.nhwc; training builds add the training domains). Anything else needs a
# custom-op library, which qconvert never loads implicitly.
NATIVE_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.training", "ai.onnx.preview.training",
    "com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc",
})
MAX_DIM = 2**31  # a graph input, output or value_info dim above this is corrupt
# Not Gemm's C: onnxruntime's pre-processing fuses MatMul + Add(-inf causal mask) into a Gemm whose C
# is the mask, a model that runs correctly.
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (1,), "Gemm": (1,)}
_HINT_CORRUPT = "the model is corrupt; re-export it"
_HINT_WEIGHTS = "the weights are corrupt; re-export the model"


@dataclass(frozen=True, eq=False)
class TensorSite:
    """A tensor stored in the model and where: an initializer, a node's tensor attribute, or the
    values or indices of a sparse one."""

    tensor: onnx.TensorProto
    label: str  # e.g. "initializer 'w1'", "Constant node 'c1' value"
    value_name: str  # the graph value it defines ('' for attributes of other nodes)
    checks_values: bool  # an initializer or a constant: NaN is refused
    graph: str  # '' for the main graph, else e.g. "If 'branch'/then_branch"

    def describe(self) -> str:
        return f"{self.label} in {self.graph}" if self.graph else self.label


def tensor_sites(model: onnx.ModelProto) -> Iterator[TensorSite]:
    """Every tensor that carries data, in every graph, subgraph and local function."""
    for graph, where in _graphs(model.graph):
        yield from _graph_sites(graph, where)
    for function in model.functions:
        where = f"function {function.name!r}"
        yield from _node_sites(function.node, where)
        for graph, inner in iter_bodies(function.node, where, label=_label):
            yield from _graph_sites(graph, inner)


def _graph_sites(graph: onnx.GraphProto, where: str) -> Iterator[TensorSite]:
    for t in graph.initializer:
        yield TensorSite(t, f"initializer {t.name!r}", t.name, True, where)
    for s in graph.sparse_initializer:
        yield TensorSite(s.values, f"sparse initializer {s.values.name!r} values", s.values.name, True, where)
        yield TensorSite(s.indices, f"sparse initializer {s.values.name!r} indices", "", False, where)
    yield from _node_sites(graph.node, where)


def _node_sites(nodes: Sequence[onnx.NodeProto], where: str) -> Iterator[TensorSite]:
    for node in nodes:
        name = node.name or (node.output[0] if node.output else "")
        constant = node.op_type in ("Constant", "ConstantOfShape") and node.domain in ("", "ai.onnx")
        for attr in node.attribute:
            label = f"{node.op_type} node {name!r} {attr.name}"
            if attr.HasField("t"):
                defines = node.output[0] if constant and node.output and attr.name == "value" else ""
                yield TensorSite(attr.t, label, defines, constant, where)
            for i, t in enumerate(attr.tensors):
                yield TensorSite(t, f"{label}[{i}]", "", False, where)
            if attr.HasField("sparse_tensor"):
                yield TensorSite(attr.sparse_tensor.values, f"{label} values", "", constant, where)
                yield TensorSite(attr.sparse_tensor.indices, f"{label} indices", "", False, where)


def _label(node: onnx.NodeProto) -> str:
    """How messages name a node that holds a subgraph: its type and name (or first output)."""
    name = node.name or (node.output[0] if node.output else "")
    return f"{node.op_type} {name!r}"


def _graphs(graph: onnx.GraphProto) -> Iterator[tuple[onnx.GraphProto, str]]:
    return iter_graphs(graph, label=_label)


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def check_structure(model: onnx.ModelProto, path: Path) -> None:
    """What the model is, before its tensors: a ModelProto with a graph, an IR version and opsets
    this onnx knows, operators onnxruntime implements, and plausible declared shapes."""
    import onnx
    import onnx.defs

    file = str(path)
    if not model.HasField("graph") or not model.opset_import:
        missing = "no graph" if not model.HasField("graph") else "no opset import"
        raise ModelError(f"{file}: not a valid ONNX model ({missing})",
                         hint="the file is corrupt, truncated, or another kind of file (a tensor, a graph)")
    if not model.graph.node:
        raise ModelError(f"{file}: not a valid ONNX model (its graph has no nodes)",
                         hint="the file is corrupt, truncated, or another kind of file (a tensor, a graph)")
    bad_text = next(_non_utf8(model), None)
    if bad_text is not None:
        raise ModelError(f"{file}: {bad_text} is not valid UTF-8 text", hint=_HINT_CORRUPT)
    if model.ir_version <= 0:
        raise ModelError(f"{file}: the model has no IR version", hint=_HINT_CORRUPT)
    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{file}: IR version {model.ir_version} is newer than this onnx supports "
                         f"({onnx.IR_VERSION})", hint="upgrade onnx and onnxruntime, or re-export for an older IR")
    opsets = _opsets(model, file)
    functions = {(f.domain, f.name) for f in model.functions}
    for graph, where in _graphs(model.graph):
        _check_nodes(graph.node, opsets, functions, file, where)
        _check_dims(graph, file, where)
    for function in model.functions:
        local = dict(opsets)
        local.update({_domain(o.domain): o.version for o in function.opset_import})
        _check_nodes(function.node, local, functions, file, f"function {function.name!r}")


def _non_utf8(model: onnx.ModelProto) -> Iterator[str]:
    """Where the model holds a name that is not UTF-8: protobuf (upb) then hands out `bytes` where
    every caller expects `str`."""
    def bad(*values: object) -> bool:
        return any(not isinstance(v, str) for v in values)

    if bad(model.producer_name, model.producer_version, model.domain):
        yield "the producer or domain"
    for entry in model.opset_import:
        if bad(entry.domain):
            yield "an opset domain"
    graphs: list[tuple[Sequence[onnx.NodeProto], str]] = [(f.node, f"function {f.name!r}") for f in model.functions]
    for f in model.functions:
        if bad(f.name, f.domain, *f.input, *f.output, *(a for a in f.attribute)):
            yield f"function {f.name!r}"
    for graph, where in _graphs(model.graph):
        if bad(graph.name):
            yield f"a graph name{_in(where)}"
        for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
            for value in values:
                if bad(value.name):
                    yield f"a graph {kind} name{_in(where)}"
        for tensor in graph.initializer:
            if bad(tensor.name, *(e.key for e in tensor.external_data), *(e.value for e in tensor.external_data)):
                yield f"an initializer name or external data entry{_in(where)}"
        graphs.append((graph.node, where))
    for nodes, where in graphs:
        for node in nodes:
            if bad(node.op_type, node.domain, node.name, *node.input, *node.output, *(a.name for a in node.attribute)):
                yield f"the name, type or a value name of a node{_in(where)}"
            for attr in node.attribute:
                if attr.HasField("t") and bad(*(e.key for e in attr.t.external_data),
                                              *(e.value for e in attr.t.external_data)):
                    yield f"an external data entry of a node attribute{_in(where)}"


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _opsets(model: onnx.ModelProto, file: str) -> dict[str, int]:
    import onnx.defs

    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": _newest("ai.onnx.ml")}
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = _domain(entry.domain)
        shown = entry.domain or "ai.onnx"
        if entry.version <= 0:
            raise ModelError(f"{file}: opset {entry.version} of domain {shown!r} is not a valid opset version",
                             hint=_HINT_CORRUPT)
        if domain in newest and entry.version > newest[domain]:
            raise ModelError(f"{file}: opset {entry.version} of domain {shown!r} is newer than this onnx "
                             f"supports ({newest[domain]})",
                             hint=f"re-export with opset {newest[domain]} or older, or upgrade onnx and onnxruntime")
        opsets[domain] = entry.version
    return opsets


def _newest(domain: str) -> int:
    import onnx.defs

    return max((s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain), default=1)


# Operators onnxruntime itself registers in the default domain, beside ONNX's own: exporters write them
# there (onnxruntime-genai's builder writes SimplifiedLayerNormalization; Caffe2 and old converters the
# experimental Affine, Crop, ImageScaler, Scale …), and onnxruntime runs them.
ONNXRUNTIME_DEFAULT_DOMAIN_OPS = frozenset({
    "SimplifiedLayerNormalization", "Affine", "Crop", "DynamicSlice", "GRUUnit", "GivenTensorFill", "ImageScaler",
    "ParametricSoftplus", "Scale", "ScaledTanh",
})


def _check_nodes(nodes: Sequence[onnx.NodeProto], opsets: dict[str, int], functions: set[tuple[str, str]],
                 file: str, where: str) -> None:
    import onnx.defs

    for node in nodes:
        domain = _domain(node.domain)
        label = f"node {node.name!r}" if node.name else f"a {node.op_type!r} node"
        if (node.domain, node.op_type) in functions:
            continue
        if domain not in NATIVE_DOMAINS:
            raise ModelError(f"{file}: {label}{_in(where)} uses operator {node.op_type!r} of domain "
                             f"{node.domain!r}, which needs a custom-op library",
                             hint="qconvert never loads custom-op libraries; quantize a model made of standard "
                                  "ONNX and onnxruntime operators")
        if domain not in opsets:
            raise ModelError(f"{file}: {label}{_in(where)} uses domain {node.domain or 'ai.onnx'!r}, which the "
                             f"model does not import", hint=_HINT_CORRUPT)
        if domain in ("", "ai.onnx.ml") and not onnx.defs.has(node.op_type, opsets[domain], domain) and not (
                domain == "" and node.op_type in ONNXRUNTIME_DEFAULT_DOMAIN_OPS):
            raise ModelError(f"{file}: {label}{_in(where)} uses operator {node.op_type!r}, unknown in domain "
                             f"{node.domain or 'ai.onnx'!r} at opset {opsets[domain]}",
                             hint="re-export with a newer opset, or check the exporter's output")


def _check_dims(graph: onnx.GraphProto, file: str, where: str) -> None:
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            vtype = value.type
            ttype = vtype.tensor_type if vtype.HasField("tensor_type") else (
                vtype.sparse_tensor_type if vtype.HasField("sparse_tensor_type") else None)
            if ttype is None or not ttype.HasField("shape"):
                continue
            for d in ttype.shape.dim:
                # A negative value is a dynamic dim (Paddle2ONNX and older exporters write -1; onnxruntime
                # reads any negative one so): only sizes no tensor can have are corrupt.
                if d.HasField("dim_value") and d.dim_value > MAX_DIM:
                    raise ModelError(f"{file}: {kind} {value.name!r}{_in(where)} declares dimension {d.dim_value}",
                                     hint=f"dimensions must not exceed {MAX_DIM}; {_HINT_CORRUPT}")


def weight_names(model: onnx.ModelProto) -> set[str]:
    """Values read as weights by quantizable ops (Conv/ConvTranspose/MatMul weight, Gemm B):
    an infinite value there becomes an infinite quantization scale."""
    names: set[str] = set()
    bodies: list[Sequence[onnx.NodeProto]] = [g.node for g, _ in _graphs(model.graph)]
    bodies += [f.node for f in model.functions]
    for nodes in bodies:
        for node in nodes:
            if _domain(node.domain) == "":
                for i in WEIGHT_INPUTS.get(node.op_type, ()):
                    if i < len(node.input) and node.input[i]:
                        names.add(node.input[i])
    return names


def check_tensors(sites: Sequence[TensorSite], plan: ExternalPlan, path: Path, weights: set[str]) -> None:
    """Each stored tensor: dims that are not negative, a size below `MAX_TOTAL_BYTES` that matches
    the bytes stored, no NaN in initializers and constants, no ±Inf in quantizable weights.
    External tensors are streamed from their (already validated) files in chunks."""
    file = str(path)
    for index, site in enumerate(sites):
        tensor = site.tensor
        what = site.describe()
        if any(d < 0 for d in tensor.dims):
            raise ModelError(f"{file}: {what} has a negative dimension {list(tensor.dims)}", hint=_HINT_CORRUPT)
        need = expected_bytes(tensor)
        if need is None and tensor.data_type != _STRING:
            raise ModelError(f"{file}: {what} has unknown data type {tensor.data_type}", hint=_HINT_CORRUPT)
        if need is not None and need > MAX_TOTAL_BYTES:
            raise ModelError(f"{file}: {what} claims {_size(need)} (shape {list(tensor.dims)})",
                             hint="the model's shapes are corrupt; re-export it")
        ref = plan.refs.get(index)
        if ref is not None:
            if site.checks_values and tensor.data_type in _FLOATS:
                _check_values(site, plan.chunks(ref), file, weights)
            continue
        raw = tensor.raw_data
        if need is None:  # strings
            _check_count(site, len(tensor.string_data), _numel(tensor), file)
        elif raw:
            if len(raw) != need:
                raise ModelError(f"{file}: {what} holds {len(raw)} bytes but its shape {list(tensor.dims)} "
                                 f"needs {need}", hint=_HINT_CORRUPT)
        else:
            _check_typed(site, file)
        if site.checks_values and tensor.data_type in _FLOATS:
            _check_values(site, _typed_chunks(tensor, raw), file, weights)


def _numel(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            break
    return f"{value:.1f} {unit} ({n} bytes)"


def _check_count(site: TensorSite, stored: int, needed: int, file: str) -> None:
    if stored != needed:
        raise ModelError(f"{file}: {site.describe()} stores {stored} value(s) but its shape "
                         f"{list(site.tensor.dims)} needs {needed}", hint=_HINT_CORRUPT)


def _check_typed(site: TensorSite, file: str) -> None:
    """Values stored in the typed fields (float_data, int32_data, …) match the dims."""
    tensor = site.tensor
    numel = _numel(tensor)
    bits = element_bits(tensor.data_type) or 8
    field, per = _TYPED_FIELD.get(tensor.data_type, ("int32_data", 1))
    stored = len(getattr(tensor, field))
    if bits >= 8:
        _check_count(site, stored, numel * per, file)
    elif (numel > 0) != (stored > 0) or stored > numel:  # packed sub-byte types: several per entry
        _check_count(site, stored, numel, file)


def _typed_chunks(tensor: onnx.TensorProto, raw: bytes) -> Iterator[bytes | memoryview]:
    """The bytes of a float tensor stored in the model file, in chunks."""
    if raw:
        view = memoryview(raw)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start:start + CHUNK_BYTES]
        return
    field, _ = _TYPED_FIELD.get(tensor.data_type, ("int32_data", 1))
    values = getattr(tensor, field)
    step = CHUNK_BYTES // 8
    for start in range(0, len(values), step):
        part = values[start:start + step]
        if tensor.data_type in (_FLOAT16, _BFLOAT16):  # bit patterns in int32_data
            yield np.asarray(part, np.int64).astype(np.uint16).tobytes()
        else:
            yield np.asarray(part, np.float64 if tensor.data_type == _DOUBLE else np.float32).tobytes()


def _non_finite(chunk: bytes | memoryview, data_type: int) -> tuple[int, int]:
    """(NaN count, ±Inf count) in a chunk of little-endian values of a float type."""
    if data_type in (_FLOAT16, _BFLOAT16):
        bits = np.frombuffer(chunk, np.uint16) & 0x7FFF
        exp = 0x7C00 if data_type == _FLOAT16 else 0x7F80
        special = bits >= exp
        if not special.any():
            return 0, 0
        inf = int(np.count_nonzero(bits == exp))
        return int(np.count_nonzero(special)) - inf, inf
    values = np.frombuffer(chunk, np.float64 if data_type == _DOUBLE else np.float32)
    with np.errstate(invalid="ignore"):
        if np.isfinite(np.dot(values, np.zeros_like(values))):  # 0 * x is 0 for every finite x: fast path
            return 0, 0
    return int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))


def _check_values(site: TensorSite, chunks: Iterator[bytes] | Iterator[bytes | memoryview], file: str,
                  weights: set[str]) -> None:
    nan = inf = 0
    for chunk in chunks:
        n, i = _non_finite(chunk, site.tensor.data_type)
        nan, inf = nan + n, inf + i
    # NaN fills (masks, padding values) are common in exports that onnxruntime runs: only a weight that
    # quantization would scale by is refused, as its scale would come out NaN.
    if nan and site.value_name in weights:
        raise ModelError(f"{file}: {site.describe()} holds {nan} NaN value(s)",
                         hint=f"it is a weight of a quantizable node; {_HINT_WEIGHTS}")
    if inf and site.value_name in weights:
        raise ModelError(f"{file}: {site.describe()}, a weight of a quantizable node, holds {inf} infinite "
                         f"value(s)", hint=f"quantizing it would give an infinite scale; {_HINT_WEIGHTS}")


_STRING, _FLOAT16, _DOUBLE, _BFLOAT16 = 8, 10, 11, 16  # onnx.TensorProto.DataType values
_FLOATS = frozenset({1, _DOUBLE, _FLOAT16, _BFLOAT16})
# Where each type keeps its values when not in raw_data, and how many entries one element takes;
# every other fixed-size type uses int32_data, one entry per element (sub-byte types: packed).
_TYPED_FIELD = {1: ("float_data", 1), 14: ("float_data", 2), _DOUBLE: ("double_data", 1),
                15: ("double_data", 2), 7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1)}
