"""Quantization through onnxruntime.quantization: the only module that builds its arguments.

onnxruntime's `extra_options` (CamelCase keys, typos silently ignored) are built here and only
here, from a typed `QuantizeConfig`.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert import progress
from qconvert.calibration import CalibrationData
from qconvert.config import ActivationType, CalibrationMethod, Mode, QuantizeConfig, Sensitive, Target, WeightType
from qconvert.errors import DataError, ModelError, NothingQuantizedError, QconvertError, RuntimeFailure, UsageError
from qconvert.model.files import check_output_path, file_nbytes, move_into_place, staging_dir
from qconvert.model.graph import PROTOBUF_LIMIT, all_initializers, has_subgraphs, iter_graphs, iter_nodes, model_nbytes
from qconvert.model.loading import LoadedModel, load_model
from qconvert.quantization.preparation import prepare
from qconvert.quantization.ranges import Calibration, calibrate
from qconvert.quantization.smoothing import smooth
from qconvert.results import OpTypeCount, QuantizeResult, SkippedNode
from qconvert.runtime import first_line, quiet_onnxruntime

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import QuantType

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                         "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization",
                         "QGemm"})
STATIC_SUBGRAPH_REASON = "in a subgraph: onnxruntime's QDQ quantizer does not enter If/Loop/Scan bodies"
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def candidate_op_types(mode: Mode) -> frozenset[str]:
    """Op types onnxruntime quantizes by default in `mode`."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if mode is Mode.DYNAMIC:
        return frozenset(IntegerOpsRegistry)
    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def quantization_kinds(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes that show a model is already quantized, by format."""
    kinds = {"qdq": 0, "qoperator": 0, "integer": 0}
    for gn in iter_nodes(model.graph):
        op = gn.node.op_type
        if op in QDQ_OPS:
            kinds["qdq"] += 1
        elif op in INTEGER_OPS:
            kinds["integer"] += 1
        elif op.startswith("QLinear"):
            kinds["qoperator"] += 1
    return kinds


def _quant_type(value: ActivationType | WeightType) -> QuantType:
    from onnxruntime.quantization import QuantType

    return {
        "int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16,
        "uint16": QuantType.QUInt16, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4,
    }[value.value]


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


def _quantized_names(model: onnx.ModelProto) -> set[str]:
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


def _skip_reason(c: Candidate, plan_: Plan) -> str:
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


class _Reader:
    """Adapts a `CalibrationData` stream to onnxruntime's `CalibrationDataReader` protocol."""

    def __init__(self, data: CalibrationData, step: progress.Step | None = None) -> None:
        self._it = iter(data)
        self._step = step
        self.count = 0

    def get_next(self) -> dict[str, Any] | None:
        sample = next(self._it, None)
        if sample is not None:
            self.count += 1
            if self._step:
                self._step()
        return sample

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> dict[str, Any]:
        sample = self.get_next()
        if sample is None:
            raise StopIteration
        return sample



def _extra_options(config: QuantizeConfig, mode: Mode, subgraphs: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ActivationSymmetric": config.symmetric_activations,
        "WeightSymmetric": config.symmetric_weights,
        "EnableSubgraph": subgraphs,
    }
    if mode is Mode.DYNAMIC:
        options["MatMulConstBOnly"] = True
    return options


def _check_types(config: QuantizeConfig, mode: Mode) -> None:
    if mode is Mode.DYNAMIC and config.weights not in (WeightType.INT8, WeightType.UINT8):
        raise UsageError(f"dynamic mode supports int8/uint8 weights, not {config.weights}",
                         hint="use --mode static for 16- and 4-bit weights")
    if config.weights in (WeightType.INT4, WeightType.UINT4) and not (
            set(config.op_types) and set(config.op_types) <= {"MatMul", "Gather"}):
        raise UsageError("4-bit weights apply to MatMul and Gather only",
                         hint="add --op-types MatMul (and Gather)")
    if mode is Mode.STATIC and config.method is CalibrationMethod.DISTRIBUTION:
        # onnxruntime's Distribution calibrator yields mean/std for float8 types, not ranges:
        # integer QDQ built from it is noise (cosine -0.26 to FP32 on a small CNN).
        raise UsageError("--method distribution applies to float8 quantization, which qconvert does not offer; "
                         "with integer types it produces unusable ranges",
                         hint="use --method minmax, entropy or percentile")
    if config.sensitive is Sensitive.INT16 and config.target is not Target.QNN:
        raise UsageError("raising sensitive nodes to 16 bits needs a target that runs mixed 8/16-bit QDQ",
                         hint="use --preset qnn-htp, or keep sensitive nodes in float")
    if config.sensitive is Sensitive.DYNAMIC and config.target is not Target.GENERIC:
        raise UsageError("dynamic quantization of sensitive nodes runs on CPUs only; NPUs run static QDQ",
                         hint="keep sensitive nodes in float (--sensitive float) for this target")
    if config.smooth is not None and not 0.0 <= config.smooth <= 1.0:
        raise UsageError(f"--smooth takes a migration strength in [0, 1], got {config.smooth}",
                         hint="0.5 suits BERT-sized models")
    if config.target is Target.QNN and mode is not Mode.STATIC:
        raise UsageError("the QNN target runs static QDQ only", hint="give --calib DATA (or drop --mode dynamic)")
    if not 0 < config.percentile <= 100:
        raise UsageError(f"--percentile must be in (0, 100], got {config.percentile}")


def resolve_mode(config: QuantizeConfig, data: CalibrationData | None) -> tuple[Mode, str]:
    if config.mode is not None:
        if config.mode is Mode.STATIC and data is None:
            raise UsageError("static quantization needs calibration data",
                             hint="pass --calib DATA (or --calib synthetic for a smoke run), or --mode dynamic")
        return config.mode, "as requested"
    if data is not None:
        return Mode.STATIC, "calibration data given"
    return Mode.DYNAMIC, "no calibration data given"


class QuantizeJob:
    """One model prepared, planned and calibrated once, then quantized as often as a search needs.

    Use inside `staging_dir(output)`: every file it writes goes to `work`, beside the output.
    """

    def __init__(self, loaded: LoadedModel, out: Path, data: CalibrationData | None, config: QuantizeConfig,
                 work: Path) -> None:
        kinds = quantization_kinds(loaded.proto)
        if any(kinds.values()):
            found = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
            raise ModelError(f"{loaded.path} is already quantized ({found} nodes)",
                             hint="quantize the FP32 original instead")
        self.loaded, self.out, self.config, self.work = loaded, out, config, work
        self.mode, self.mode_reason = resolve_mode(config, data)
        _check_types(config, self.mode)
        self.warnings: list[str] = []
        if self.mode is Mode.DYNAMIC and data is not None:
            self.warnings.append("dynamic mode computes activation ranges at run time: calibration data not used")
            data = None
        self.data = data
        self.subgraphs = config.subgraphs if config.subgraphs is not None else has_subgraphs(loaded.proto)
        started = time.perf_counter()
        self.external = loaded.uses_external_data or model_nbytes(loaded.proto) >= PROTOBUF_LIMIT
        # The prepared model keeps its weights in a sidecar: planning reads only the graph.
        self.prepared = work / "prepared.onnx"
        with quiet_onnxruntime():
            self.proto, self.prep = prepare(loaded.owned_copy(), self.prepared, enabled=config.preprocess,
                                            optimize=self.mode is Mode.STATIC, fixed_shapes=config.fixed_shapes)
        self.warnings.extend(self.prep.warnings)
        self.smoothed = 0
        if config.smooth is not None and self.mode is not Mode.STATIC:
            self.warnings.append("--smooth applies to static quantization (dynamic mode measures activations at run "
                                 "time): not applied")
        if config.smooth is not None and self.mode is Mode.STATIC:
            import onnx

            assert data is not None
            with quiet_onnxruntime():
                self.smoothed = smooth(self.prepared, data, work, alpha=config.smooth)
            self.proto = onnx.load(str(self.prepared), load_external_data=False)
            if not self.smoothed:
                self.warnings.append("--smooth: no MatMul with a constant 2-D weight to migrate scales into")
        self.plan = plan(self.proto, self.mode, config, self.subgraphs)
        if self.mode is Mode.STATIC and self.subgraphs and self.plan.subgraph_candidates:
            self.warnings.append("onnxruntime's QDQ quantizer does not enter subgraphs: their nodes were quantized "
                                 "dynamically (integer ops), the main graph statically")
        if data is not None and data.synthetic:
            self.warnings.append("synthetic calibration data: a smoke run, not a real calibration")
        self.prepare_seconds = time.perf_counter() - started
        self.calibration: Calibration | None = None
        if self.mode is Mode.STATIC and _reads_calibration_cache():
            from onnxruntime.quantization import save_tensors_data

            assert data is not None
            with quiet_onnxruntime():
                self.calibration = calibrate(self.prepared, data, self.plan.op_types, work,
                                             method=config.method, symmetric=config.symmetric_activations,
                                             percentile=config.percentile, external=self.external)
            if self.calibration.infinite:
                names = ", ".join(repr(n) for n in self.calibration.infinite[:5])
                self.warnings.append(f"{len(self.calibration.infinite)} tensor(s) hold ±Inf (such as a -inf attention "
                                     f"mask): ranged over their finite values, infinities quantize to the ends "
                                     f"({names})")
            self.ranges_file = work / "ranges.json"
            save_tensors_data(self.calibration.ranges, self.ranges_file)

    def widened_tensors(self, nodes: list[str]) -> list[str]:
        """The float activations `nodes` read and write: what raising them to 16 bits overrides."""
        wanted = set(nodes)
        names: dict[str, None] = {}
        for node in self.proto.graph.node:
            if node.name in wanted:
                names.update(dict.fromkeys(t for t in (*node.input, *node.output)
                                           if t and t not in self.plan.constants))
        return list(names)

    def run(self, staged: Path, keep_float: dict[str, str] | None = None,
            widen: list[str] | None = None) -> QuantizeResult:
        """Quantize into `staged`, leaving the nodes in `keep_float` (name -> reason) out of static
        QDQ — in float, or quantized dynamically with `sensitive=dynamic` — and raising the
        activations of the nodes in `widen` to 16 bits (QNN target only)."""
        import onnx

        the_plan = replace(self.plan, excluded={**self.plan.excluded, **(keep_float or {})})
        wide = self.widened_tensors(widen or [])
        dynamic = sorted(keep_float or {}) if self.config.sensitive is Sensitive.DYNAMIC else []
        static_out = staged.with_name("mixed-" + staged.name) if dynamic else staged
        samples = self.calibration.samples if self.calibration else 0
        freed = 0
        t0 = time.perf_counter()
        with quiet_onnxruntime():
            if self.mode is Mode.STATIC and self.calibration is not None:
                freed = _run_static(self.prepared, static_out, self.ranges_file, the_plan, self.config,
                                    self.external, wide)
            elif self.mode is Mode.STATIC:  # older onnxruntime builds (onnxruntime-openvino 1.24) calibrate here
                assert self.data is not None
                with progress.task("calibration", total=self.data.expected_samples()) as step:
                    reader = _Reader(self.data, step)
                    freed = _run_static(self.prepared, static_out, reader, the_plan, self.config, self.external,
                                        wide)
                samples = reader.count
            if self.mode is Mode.STATIC and dynamic:
                _run_dynamic(static_out, staged, the_plan, self.config, self.external, [], only=dynamic)
            elif self.mode is Mode.DYNAMIC:
                _run_dynamic(self.prepared, staged, the_plan, self.config, self.external, the_plan.nodes_to_exclude)
        quant_seconds = time.perf_counter() - t0
        _check_loads(staged)
        quantized_model = onnx.load(str(staged), load_external_data=False)
        _check_scales(quantized_model, staged)
        done = _quantized_names(quantized_model)
        if self.mode is Mode.STATIC:
            present = {gn.node.name for gn in iter_nodes(quantized_model.graph)}
            done |= {c.name for c in the_plan.candidates if c.name not in present}
        done -= set(the_plan.excluded) - set(dynamic)
        result_ops: dict[str, OpTypeCount] = {}
        skipped: list[SkippedNode] = []
        for c in the_plan.candidates:
            counts = result_ops.setdefault(c.op_type, OpTypeCount())
            counts.candidates += 1
            if c.name in done:
                counts.quantized += 1
            else:
                reason = _skip_reason(c, the_plan)
                if c.name in dynamic:  # taken out of static QDQ for dynamic quantization, which refused it
                    reason += f"; left in float: {_skip_reason(c, replace(the_plan, mode=Mode.DYNAMIC, excluded={}))}"
                skipped.append(SkippedNode(c.name, c.op_type, c.graph, reason))
        if not any(c.quantized for c in result_ops.values()):
            reasons = sorted({s.reason for s in skipped})
            raise NothingQuantizedError(
                f"nothing to quantize in {self.loaded.path}: {len(the_plan.candidates)} candidate node(s), "
                "none quantized",
                hint="check --op-types / --exclude-*; no output was written",
                details=tuple(reasons) or ("the model has no node of a quantizable op type",))
        config = self.config
        return QuantizeResult(
            input_path=str(self.loaded.path), output_path=str(self.out), mode=self.mode.value,
            mode_reason=self.mode_reason, config={**config.to_dict(), "mode": self.mode.value,
                                                  "subgraphs": self.subgraphs},
            data=self.data.to_dict() if self.data else None, calibration_samples=samples,
            op_types=result_ops, skipped=skipped, bytes_before=self.loaded.file_bytes,
            bytes_after=file_nbytes(staged),
            prepare_seconds=self.prepare_seconds,
            calibration_seconds=self.calibration.seconds if self.calibration else 0.0,
            quantization_seconds=quant_seconds,
            preprocess=self.prep.to_dict() if config.preprocess or config.fixed_shapes else None,
            warnings=list(self.warnings), float_outputs=freed,
        )


def quantize(model: str | Path | LoadedModel, output: str | Path, data: CalibrationData | None = None, *,
             config: QuantizeConfig | None = None, force: bool = False) -> QuantizeResult:
    """Quantize `model` into `output` (QDQ for static, integer ops for dynamic) and report what happened.

    The output is written atomically; the input is never modified. Raises NothingQuantizedError,
    without writing anything, when no node would be quantized.
    """
    config = config or QuantizeConfig()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    out = Path(output)
    check_output_path(out, inputs=(loaded.path,), force=force)
    with staging_dir(out) as work:
        job = QuantizeJob(loaded, out, data, config, work)
        staged = work / out.name
        result = job.run(staged)
        result.bytes_after = move_into_place(staged, out)
    return result


def _reads_calibration_cache() -> bool:
    """Whether quantize_static takes saved ranges (1.32 does, 1.24 does not), so calibration can be ours."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _target_options(src: Path, plan_: Plan, config: QuantizeConfig,
                    wide: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Op types and extra options for the target: onnxruntime's defaults, or its QNN helper's
    per-op overrides (with `wide` activations raised to 16 bits and the type converts they need)."""
    from onnxruntime.quantization import QuantType

    options = _extra_options(config, Mode.STATIC, subgraphs=False)
    if config.target is not Target.QNN:
        return plan_.op_types, options
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    unsigned = config.activations in (ActivationType.UINT8, ActivationType.UINT16)
    wide_type = QuantType.QUInt16 if unsigned else QuantType.QInt16
    qnn = get_qnn_qdq_config(
        str(src), None, activation_type=_quant_type(config.activations), weight_type=_quant_type(config.weights),
        per_channel=config.per_channel, activation_symmetric=config.symmetric_activations,
        weight_symmetric=config.symmetric_weights, op_types_to_quantize=plan_.op_types or None,
        nodes_to_exclude=plan_.nodes_to_exclude, init_overrides={t: [{"quant_type": wide_type}] for t in wide})
    return list(qnn.op_types_to_quantize), {**options, **qnn.extra_options}


def _run_static(src: Path, staged: Path, calibration: Path | _Reader, plan_: Plan, config: QuantizeConfig,
                external: bool, wide: list[str]) -> int:
    """QDQ-quantize from the ranges cached at `calibration`, or by calibrating on that reader.
    Returns how many MatMul/Gemm outputs were left in float (`QuantizeConfig.float_outputs`)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    static_out = staged.with_name("static-" + staged.name) if plan_.subgraph_candidates and plan_.subgraphs else staged
    op_types, options = _target_options(src, plan_, config, wide)
    try:
        quantize_static(
            str(src), str(static_out), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types, per_channel=config.per_channel,
            reduce_range=config.reduce_range, activation_type=_quant_type(config.activations),
            weight_type=_quant_type(config.weights), nodes_to_exclude=plan_.nodes_to_exclude,
            use_external_data_format=external, calibrate_method=_ort_method(config.method),
            extra_options=options,
            **({"calibration_data_reader": calibration} if isinstance(calibration, _Reader)
               else {"calibration_data_reader": None, "calibration_cache_path": str(calibration)}),
        )
    except QconvertError:  # the data reader's own errors
        raise
    except Exception as exc:
        if isinstance(calibration, _Reader) and calibration.count == 0:
            raise DataError("no calibration samples", hint="give non-empty data") from exc
        raise ModelError(f"onnxruntime could not quantize the model: {first_line(exc)}",
                         hint="try --no-preprocess, or exclude the failing node with --exclude-nodes") from exc
    freed = _float_outputs(static_out, plan_) if config.float_outputs else 0
    if static_out != staged:
        subgraph_nodes = set(plan_.subgraph_candidates)
        main_and_excluded = [c.name for c in plan_.candidates if c.name not in subgraph_nodes]
        _run_dynamic(static_out, staged, plan_, config, external, sorted(main_and_excluded))
    return freed


FLOAT_OUTPUT_OPS = frozenset({"MatMul", "Gemm"})  # their integer kernels can write float directly


def _float_outputs(path: Path, plan_: Plan) -> int:
    """Drop the Q/DQ pair onnxruntime puts on every output of a quantized MatMul/Gemm that no
    quantized op reads (by `plan_`: its op types, less the nodes it excludes; a graph output is
    read in float). Such a pair only adds rounding, per tensor, across the outlier channels of a
    transformer's residual stream or a classifier's logits. The MatMul/Gemm still reads quantized
    inputs and runs in integers (MatMulIntegerToFloat, QGemm with a float output on CPU). Returns
    how many outputs were freed; the model at `path` is rewritten only when there were some."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    quantized = _quantized_names(model)

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


def _check_loads(path: Path) -> None:
    """Refuse to ship a model onnxruntime itself cannot load."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with quiet_onnxruntime():
            onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime produced a model it cannot load: {first_line(exc)}",
                         hint="keep pre-processing on (it upgrades old opsets), or try --per-tensor; "
                              "no output was written") from exc


def _check_scales(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a model whose quantization scales are not finite and positive: onnxruntime checks its
    ranges with `assert`, which `python -O` removes."""
    from onnx.numpy_helper import to_array

    scales = {gn.node.input[1] for gn in iter_nodes(model.graph)
              if gn.node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(gn.node.input) > 1}
    for tensor in all_initializers(model):
        if tensor.name in scales:
            values = to_array(tensor, base_dir=str(path.parent)).astype(np.float64)
            if not (np.isfinite(values).all() and (values > 0).all()):
                raise RuntimeFailure(f"the quantizer wrote an invalid scale {tensor.name!r} ({values.ravel()[:4]})",
                                     hint="the calibration ranges are not finite: check the data; no output "
                                          "was written")


def _ort_method(method: CalibrationMethod) -> Any:
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod

    return {
        CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile, CalibrationMethod.DISTRIBUTION: OrtMethod.Distribution,
    }[method]


def _run_dynamic(src: Path, staged: Path, plan_: Plan, config: QuantizeConfig, external: bool,
                 exclude: list[str], only: list[str] | None = None) -> None:
    """Integer-op quantization of the nodes not in `exclude` (or of the nodes in `only`)."""
    from onnxruntime.quantization import quantize_dynamic

    dynamic_ops = sorted(set(plan_.op_types) & candidate_op_types(Mode.DYNAMIC)) or plan_.op_types
    weight = config.weights if config.weights in (WeightType.INT8, WeightType.UINT8) else WeightType.INT8
    try:
        quantize_dynamic(
            str(src), str(staged), op_types_to_quantize=dynamic_ops, per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=_quant_type(weight), nodes_to_exclude=exclude,
            nodes_to_quantize=only,
            use_external_data_format=external,
            extra_options=_extra_options(config, Mode.DYNAMIC, subgraphs=plan_.subgraphs),
        )
    except Exception as exc:
        raise ModelError(f"onnxruntime could not quantize the model: {first_line(exc)}",
                         hint="try --no-preprocess, or exclude the failing node with --exclude-nodes") from exc
