"""16-bit floats: a model written in float16 or bfloat16 by onnxruntime's converter (`casts`), with
the nodes that would break there kept in float32, each with its reason.

Which nodes stay float32, by the first rule that applies (NVIDIA ModelOpt's AutoCast keeps nodes by
the same kinds of rule):
1. `--keep-float`: node-name globs and op types, by hand.
2. Op types onnxruntime's converter keeps (TopK, NonMaxSuppression, Range, …); for bfloat16, op
   types no ONNX opset defines for it.
3. `--ep`: op types the provider has no 16-bit kernel for in this onnxruntime.
4. float16: weights beyond its range (|x| > 65504), or below its smallest normal throughout.
5. float16 with calibration data: nodes that read or write an activation beyond the activation
   limit, or one below float16's smallest normal throughout. Without data no activation is checked,
   and the result says so.

The converter puts casts around kept nodes; a float32 value that would pass through float16 between
two of them (or between one and a float32 input or output) is then read directly instead, so a kept
region never overflows. bfloat16 needs opset 13 (22 for Conv and pooling): older models are
upgraded with ONNX's version converter first.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qconvert.calibration import CalibrationData
from qconvert.config import FP16_MAX, FP16_TINY, FloatConfig, FloatType
from qconvert.errors import ModelError, first_line
from qconvert.model.files import check_output_path, move_into_place, save_model, staging_dir
from qconvert.model.graph import (
    PROTOBUF_LIMIT,
    iter_graphs,
    iter_nodes,
    model_nbytes,
    name_unnamed,
    sort_nodes,
    typed_names,
)
from qconvert.model.loading import LoadedModel, load_model
from qconvert.providers import check_loads, cpu_casts, has_kernel, quiet_onnxruntime, resolve, typed_kernels
from qconvert.quantization import casts
from qconvert.quantization.planning import refuse_quantized
from qconvert.quantization.preparation import remove_initializer_inputs
from qconvert.quantization.ranges import tensor_peaks
from qconvert.results import ConvertResult, SkippedNode

FLOAT = onnx.TensorProto.FLOAT
ELEMENT = {FloatType.FP16: "float16", FloatType.BF16: "bfloat16"}
BF16_OPSET = 13  # the first opset with bfloat16 in most op types


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def bfloat16_since(op_type: str) -> int | None:
    """The first ONNX opset whose `op_type` takes bfloat16 tensors, or None when none does."""
    version = onnx.defs.onnx_opset_version()
    since = None
    while version >= 1:
        try:
            schema = onnx.defs.get_schema(op_type, version, "")
        except onnx.defs.SchemaError:
            break
        if not any("tensor(bfloat16)" in c.allowed_type_strs for c in schema.type_constraints):
            break
        since = schema.since_version
        version = schema.since_version - 1
    return since


@dataclass
class _Keep:
    """The nodes kept in float32, by name, with their reasons; the converter is told the names."""

    reasons: dict[str, SkippedNode] = field(default_factory=dict)
    by_converter: set[str] = field(default_factory=set)  # kept by the converter's own list: not passed to it

    def add(self, node: onnx.NodeProto, graph: str, reason: str, *, converter: bool = False) -> None:
        if node.name not in self.reasons:
            self.reasons[node.name] = SkippedNode(node.name, node.op_type, graph, reason)
            if converter:
                self.by_converter.add(node.name)

    @property
    def names(self) -> set[str]:
        return set(self.reasons) - self.by_converter


def _float_nodes(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node that reads or writes a float32 tensor, with its graph's path."""
    for graph, where in iter_graphs(model.graph):
        floats = typed_names(graph, FLOAT)
        for node in graph.node:
            if any(t in floats for t in (*node.input, *node.output)) or (node.op_type == "Constant" and any(
                    a.t.data_type == FLOAT for a in node.attribute)):
                yield node, where


def _peak(value: np.ndarray) -> float:
    """The largest finite |x| (0 for none), without copying a finite tensor."""
    high, low = np.fmax.reduce(value, axis=None, initial=-np.inf), np.fmin.reduce(value, axis=None, initial=np.inf)
    if np.isfinite(high) and np.isfinite(low):
        return float(max(abs(high), abs(low)))
    return float(np.abs(value[np.isfinite(value)]).max(initial=0.0))


def _out_of_range(peak: float) -> str | None:
    if peak > FP16_MAX:
        return f"beyond float16's {FP16_MAX:g}"
    if 0 < peak < FP16_TINY:
        return f"below float16's smallest normal ({FP16_TINY:.3g}) throughout"
    return None


class _Policy:
    def __init__(self, model: onnx.ModelProto, config: FloatConfig, warnings: list[str]) -> None:
        self.model, self.config, self.warnings = model, config, warnings
        self.keep = _Keep()
        self.nodes = list(_float_nodes(model))

    def by_hand(self) -> None:
        for pattern in self.config.keep_float:
            matched = [(n, g) for n, g in self.nodes if n.op_type == pattern or fnmatch.fnmatchcase(n.name, pattern)]
            if not matched:
                self.warnings.append(f"--keep-float {pattern!r} matches no node name or op type")
            for node, graph in matched:
                self.keep.add(node, graph, f"kept by --keep-float {pattern}")

    def op_types(self) -> None:
        block = casts.converter_block_list()
        for node, graph in self.nodes:
            if node.op_type in block and node.domain in ("", "ai.onnx"):
                self.keep.add(node, graph, casts.CONVERTER_KEEPS, converter=True)
            elif self.config.to is FloatType.BF16 and node.domain in ("", "ai.onnx") and \
                    bfloat16_since(node.op_type) is None:
                self.keep.add(node, graph, f"no ONNX opset defines {node.op_type} for bfloat16")

    def kernels(self) -> None:
        if self.config.provider is None:
            return
        provider = resolve(self.config.provider).name
        element = ELEMENT[self.config.to]
        kernels = typed_kernels(provider, element)
        if kernels is None:
            self.warnings.append(f"onnxruntime lists no kernels for {provider} (it compiles whole graphs, or this "
                                 f"build cannot list them): which ops it runs in {element} was not checked")
            return
        for node, graph in self.nodes:
            if not has_kernel(node, kernels):
                self.keep.add(node, graph, f"{provider} has no {element} kernel for {node.op_type}")

    def weights(self) -> None:
        """float16 only: weights out of its range keep the nodes that read them, and the Constant
        that makes one (the converter would clamp its value)."""
        for graph, where in iter_graphs(self.model.graph):
            peaks = {name: _peak(v) for name, v in casts.graph_constants(graph)}
            makers = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
            for node in graph.node:
                for name in node.input:
                    why = _out_of_range(peaks[name]) if name in peaks else None
                    if why:
                        reason = f"weight {name!r} reaches {peaks[name]:.3g}, {why}"
                        self.keep.add(node, where, reason)
                        if name in makers:
                            self.keep.add(makers[name], where, reason)

    def activations(self, peaks: dict[str, float]) -> None:
        """float16 with data: main-graph nodes that read or write values beyond the limit."""
        limit = self.config.activation_limit
        inputs = {i.name for i in self.model.graph.input}
        for name in sorted(inputs & peaks.keys()):
            if peaks[name] > limit:
                self.warnings.append(f"input {name!r} reaches {peaks[name]:.3g} on the calibration data: float16 "
                                     f"cannot hold it, and float32 inputs are cast on entry; scale the input")
        for node in self.model.graph.node:
            for name in (*node.output, *node.input):
                peak = peaks.get(name)
                if peak is None:
                    continue
                why = (f"beyond the limit of {limit:g}" if peak > limit else
                       _out_of_range(peak) if peak < FP16_TINY else None)
                if why:
                    side = "writes" if name in node.output else "reads"
                    self.keep.add(node, "", f"{side} {name!r}, which reaches {peak:.3g} on the calibration data, {why}")
                    break


def _bypass_round_trips(graph: onnx.GraphProto, inserted: set[str]) -> None:
    """Where a Cast the converter inserted turns a float32 value into float16 and another turns it
    back, the float32 readers read the original: a kept region never passes through float16."""
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.name not in inserted or node.op_type != "Cast" or node.attribute[0].i != FLOAT:
            continue
        first = producers.get(node.input[0])
        if first is None or first.name not in inserted or first.op_type != "Cast" or first.attribute[0].i == FLOAT:
            continue
        source = first.input[0]
        if node.output[0] in outputs:
            graph.node.remove(node)
            graph.node.append(onnx.helper.make_node("Identity", [source], [node.output[0]], name=node.name))
            continue
        for reader in graph.node:
            for i, name in enumerate(reader.input):
                if name == node.output[0]:
                    reader.input[i] = source
        graph.node.remove(node)
    read = {name for n in graph.node for name in n.input} | outputs
    for node in list(graph.node):
        if node.name in inserted and node.op_type == "Cast" and node.output[0] not in read:
            graph.node.remove(node)


def _drop_inferred_types(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Drop the value_info the converter needed and the input did not have (onnxruntime infers them
    again): a small model would otherwise grow by its every tensor's type."""
    had = {v.name for graph, _ in iter_graphs(source.graph) for v in graph.value_info}
    for graph, _ in iter_graphs(model.graph):
        kept = [v for v in graph.value_info if v.name in had]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)


def _typed(loaded: LoadedModel, opset: int | None) -> onnx.ModelProto:
    """The model, upgraded to `opset` when given, with ONNX's inferred types on every tensor (the
    converter places casts by them), then its weights: inference and the upgrade read the graph
    alone, so external weights are read once, and models over 2 GB work."""
    from onnx.external_data_helper import load_external_data_for_model

    proto = onnx.ModelProto()
    proto.CopyFrom(loaded.proto)  # external weights stay on disk here
    remove_initializer_inputs(proto)  # weights listed as inputs too (IR 3, Caffe2) would stay float32 behind casts
    if opset is not None:
        proto = _upgrade(proto, opset)
    proto = onnx.shape_inference.infer_shapes(proto)
    if loaded.uses_external_data:
        load_external_data_for_model(proto, str(loaded.path.parent))
    return proto


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        upgraded: onnx.ModelProto = onnx.version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ModelError(f"bfloat16 needs opset {opset}, and ONNX's version converter cannot upgrade the model from "
                         f"opset {default_opset(model)}: {first_line(exc)}",
                         hint="export the model at opset 22, or convert to fp16") from exc
    return upgraded


def _bf16_opset(model: onnx.ModelProto) -> int:
    needed = [bfloat16_since(gn.node.op_type) for gn in iter_nodes(model.graph) if gn.node.domain in ("", "ai.onnx")]
    return max([BF16_OPSET, *(n for n in needed if n is not None)])


def write_floats(model: str | Path | LoadedModel, output: str | Path, data: CalibrationData | None = None, *,
                 config: FloatConfig | None = None, force: bool = False) -> ConvertResult:
    """Write `model` in 16-bit floats into `output` (atomically; the input is never modified), keeping
    in float32 what the rules above keep; with `data` (float16), activation ranges are checked too."""
    config = config or FloatConfig()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    out = Path(output)
    check_output_path(out, inputs=(loaded.path,), force=force)
    refuse_quantized(loaded, "convert writes float models in 16 bits", hint="convert the FP32 original")
    started = time.perf_counter()
    warnings: list[str] = []
    external = loaded.uses_external_data or model_nbytes(loaded.proto) >= PROTOBUF_LIMIT
    fp16 = config.to is FloatType.FP16
    if data is not None and not fp16:
        warnings.append("bfloat16 has float32's range: the calibration data was not needed and not read")
        data = None
    with staging_dir(out) as work:
        peaks: dict[str, float] = {}
        samples = 0
        if data is not None:
            with quiet_onnxruntime():
                peaks, samples = tensor_peaks(loaded.path, data, work, external=external)
        opset_before, needed = default_opset(loaded.proto), _bf16_opset(loaded.proto)
        proto = _typed(loaded, needed if not fp16 and opset_before < needed else None)
        unnamed = {id(gn.node) for gn in iter_nodes(proto.graph) if not gn.node.name}
        name_unnamed(proto)
        given = {gn.node.name for gn in iter_nodes(proto.graph) if id(gn.node) in unnamed}
        policy = _Policy(proto, config, warnings)
        if not policy.nodes:
            raise ModelError(f"{loaded.path} has no float32 tensor to convert",
                             hint="`qconvert inspect` shows its types; it may be 16-bit already")
        policy.by_hand()
        policy.op_types()
        policy.kernels()
        if fp16:
            policy.weights()
            policy.activations(peaks)
        originals = {} if fp16 else casts.bfloat16_constants(proto)
        before = {gn.node.name for gn in iter_nodes(proto.graph)}
        with quiet_onnxruntime():
            proto = casts.to_float16(proto, io_float32=config.io_float32, keep_nodes=policy.keep.names)
        inserted = {gn.node.name for gn in iter_nodes(proto.graph)} - before
        _bypass_round_trips(proto.graph, inserted)
        sort_nodes(proto.graph)
        _drop_inferred_types(proto, loaded.proto)
        for gn in iter_nodes(proto.graph):  # the names given only to tell nodes apart, unless kept
            if gn.node.name in given and gn.node.name not in policy.keep.reasons:
                gn.node.name = ""
        if not fp16:
            proto = casts.to_bfloat16(proto, originals)
        staged = work / out.name
        save_model(proto, staged, external=external)
        kept, float_nodes = list(policy.keep.reasons.values()), len(policy.nodes)
        opset_after, casts_found = default_opset(proto), cpu_casts(proto, ELEMENT[config.to])
        del proto, policy, originals  # their memory (the weights, twice over) is not needed to check the file
        _check(staged, config.to)
        bytes_after = move_into_place(staged, out)
    if data is None and fp16:
        warnings.append("no activation range was checked (no calibration data): values past 65504 overflow float16 "
                        "(inf, or 65504 where a kernel saturates); --calib DATA checks them")
    return ConvertResult(
        input_path=str(loaded.path), output_path=str(out), config=config.to_dict(),
        data=data.to_dict() if data is not None else None, calibration_samples=samples,
        float_nodes=float_nodes, kept=kept, bytes_before=loaded.file_bytes, bytes_after=bytes_after,
        opset_before=opset_before, opset_after=opset_after, seconds=time.perf_counter() - started,
        cpu_casts=casts_found[1] if casts_found else 0, warnings=warnings)


def _check(path: Path, to: FloatType) -> None:
    """float16: onnxruntime loads it; bfloat16 (which onnxruntime's CPU provider does not run): ONNX's
    full check, types included."""
    if to is FloatType.FP16:
        check_loads(path, failure="onnxruntime cannot load the float16 model it produced",
                    hint="keep the failing node in float32 with --keep-float NAME; no output was written")
        return
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ModelError(f"the bfloat16 model does not pass ONNX's checker: {first_line(exc)}",
                         hint="keep the failing node in float32 with --keep-float NAME; no output was written") \
            from exc

