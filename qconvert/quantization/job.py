"""The quantization job as named steps: prepare (pre-process, smooth, plan), calibrate, quantize.

A `QuantizeJob` checks its configuration against the model when it is made; `prepare()` and
`calibrate()` run once, and `quantize()` as often as an accuracy search needs, each returning
what it did. `quantize()` (the function) runs the three for one output, written atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert import progress
from qconvert.calibration import CalibrationData
from qconvert.config import (
    CalibrationMethod,
    Mode,
    QuantizeConfig,
    Sensitive,
    Target,
    TextData,
    WeightMethod,
    WeightType,
)
from qconvert.errors import NothingQuantizedError, RuntimeFailure, UsageError
from qconvert.model.files import check_output_path, file_nbytes, move_into_place, staging_dir
from qconvert.model.graph import PROTOBUF_LIMIT, all_initializers, has_subgraphs, iter_nodes, model_nbytes
from qconvert.model.loading import LoadedModel, load_model
from qconvert.providers import check_loads, quiet_onnxruntime
from qconvert.quantization import adapter
from qconvert.quantization.float_outputs import free_outputs
from qconvert.quantization.planning import (
    Plan,
    plan,
    quantization_kinds,
    quantized_names,
    refuse_quantized,
    skip_reason,
)
from qconvert.quantization.preparation import prepare
from qconvert.quantization.qat import QatWeight, fold_qat, qat_weights
from qconvert.quantization.ranges import Calibration, calibrate
from qconvert.quantization.smoothing import smooth
from qconvert.quantization.weight_only import quantize_weights
from qconvert.results import OpTypeCount, QuantizeResult, SkippedNode

if TYPE_CHECKING:
    import onnx

    from qconvert.results import PrepareResult

log = logging.getLogger(__name__)

MAX_FAILING_NODES = 16  # nodes onnxruntime's quantizer may fail on, each then left in float, before it is an error


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


@dataclass(frozen=True)
class Prepared:
    """What `QuantizeJob.prepare()` made: the prepared model at `path` (weights in a sidecar beside
    it), its graph without weight data, the plan, and what pre-processing and smoothing did."""

    path: Path
    proto: onnx.ModelProto
    plan: Plan
    passes: PrepareResult
    smoothed: int  # MatMuls SmoothQuant migrated scales into
    seconds: float


class QuantizeJob:
    """One model checked, then prepared and calibrated once, then quantized as often as a search
    needs: `prepare()`, `calibrate()`, then `quantize()` any number of times.

    Use inside `staging_dir(output)`: every file it writes goes to `work`, beside the output.
    """

    def __init__(self, loaded: LoadedModel, out: Path, data: CalibrationData | None, config: QuantizeConfig,
                 work: Path) -> None:
        refuse_quantized(loaded)
        if config.mode is Mode.WEIGHT_ONLY:
            raise UsageError("weight-only quantization has no static/dynamic job steps",
                             hint="call qconvert.quantize with mode=weight-only")
        self.loaded, self.out, self.config, self.work = loaded, out, config, work
        self.mode, self.mode_reason = resolve_mode(config, data)
        _check_types(config, self.mode)
        self.warnings: list[str] = []
        if self.mode is Mode.DYNAMIC and data is not None:
            self.warnings.append("dynamic mode computes activation ranges at run time: calibration data not used")
            data = None
        self.data = data
        self.subgraphs = config.subgraphs if config.subgraphs is not None else has_subgraphs(loaded.proto)
        self.external = loaded.uses_external_data or model_nbytes(loaded.proto) >= PROTOBUF_LIMIT
        self._prepared: Prepared | None = None
        self.calibration: Calibration | None = None
        self._ranges_file: Path | None = None

    @property
    def prepared(self) -> Prepared:
        if self._prepared is None:
            raise RuntimeError("QuantizeJob.prepare() must run first")
        return self._prepared

    @property
    def plan(self) -> Plan:
        return self.prepared.plan

    def prepare(self) -> Prepared:
        """Step 1: pre-process (and smooth) the model into the work folder and plan which nodes to quantize."""
        config, data = self.config, self.data
        started = time.perf_counter()
        # The prepared model keeps its weights in a sidecar: planning reads only the graph.
        path = self.work / "prepared.onnx"
        with quiet_onnxruntime():
            proto, passes = prepare(self.loaded.owned_copy(), path, enabled=config.preprocess,
                                    optimize=self.mode is Mode.STATIC, fixed_shapes=config.fixed_shapes)
        self.warnings.extend(passes.warnings)
        smoothed = 0
        if config.smooth is not None and self.mode is not Mode.STATIC:
            self.warnings.append("--smooth applies to static quantization (dynamic mode measures activations at run "
                                 "time): not applied")
        if config.smooth is not None and self.mode is Mode.STATIC:
            import onnx

            assert data is not None
            with quiet_onnxruntime():
                smoothed = smooth(path, data, self.work, alpha=config.smooth)
            proto = onnx.load(str(path), load_external_data=False)
            if not smoothed:
                self.warnings.append("--smooth: no MatMul with a constant 2-D weight to migrate scales into")
        the_plan = plan(proto, self.mode, config, self.subgraphs)
        if self.mode is Mode.STATIC and self.subgraphs and the_plan.subgraph_candidates:
            main = ("the main graph statically" if the_plan.main_candidates
                    else "and the main graph has nothing to quantize")
            self.warnings.append(f"onnxruntime's QDQ quantizer does not enter subgraphs: their nodes were quantized "
                                 f"dynamically (integer ops), {main}")
        if data is not None and data.synthetic:
            self.warnings.append("synthetic calibration data: a smoke run, not a real calibration")
        self._prepared = Prepared(path, proto, the_plan, passes, smoothed, time.perf_counter() - started)
        return self._prepared

    def calibrate(self) -> Calibration | None:
        """Step 2 (static mode): activation ranges from the calibration data, streamed. None when
        nothing is to calibrate here: dynamic mode, or an onnxruntime build that only calibrates
        inside its own quantizer (then `quantize()` feeds it the data)."""
        prepared = self.prepared
        if self.mode is not Mode.STATIC or not adapter.reads_calibration_cache() or not prepared.plan.main_candidates:
            return None
        assert self.data is not None
        config = self.config
        with quiet_onnxruntime():
            self.calibration = calibrate(prepared.path, self.data, prepared.plan.op_types, self.work,
                                         method=config.method, symmetric=config.symmetric_activations,
                                         percentile=config.percentile, external=self.external)
        if self.calibration.infinite:
            names = ", ".join(repr(n) for n in self.calibration.infinite[:5])
            self.warnings.append(f"{len(self.calibration.infinite)} tensor(s) hold ±Inf (such as a -inf attention "
                                 f"mask): ranged over their finite values, infinities quantize to the ends "
                                 f"({names})")
        self._ranges_file = self.work / "ranges.json"
        adapter.save_ranges(self.calibration.ranges, self._ranges_file)
        return self.calibration

    def widened_tensors(self, nodes: list[str]) -> list[str]:
        """The float activations `nodes` read and write: what raising them to 16 bits overrides."""
        wanted = set(nodes)
        names: dict[str, None] = {}
        for node in self.prepared.proto.graph.node:
            if node.name in wanted:
                names.update(dict.fromkeys(t for t in (*node.input, *node.output)
                                           if t and t not in self.plan.constants))
        return list(names)

    def quantize(self, staged: Path, keep_float: dict[str, str] | None = None,
                 widen: list[str] | None = None) -> QuantizeResult:
        """Step 3: quantize into `staged`, leaving the nodes in `keep_float` (name -> reason) out of
        static QDQ — in float, or quantized dynamically with `sensitive=dynamic` — and raising the
        activations of the nodes in `widen` to 16 bits (QNN target only)."""
        prepared = self.prepared
        the_plan = replace(prepared.plan, excluded={**prepared.plan.excluded, **(keep_float or {})})
        dynamic = sorted(keep_float or {}) if self.config.sensitive is Sensitive.DYNAMIC else []
        samples = self.calibration.samples if self.calibration else 0
        warnings = list(self.warnings)
        t0 = time.perf_counter()
        failed: list[str] = []  # nodes onnxruntime's quantizer failed on, left in float
        while True:
            try:
                freed, read = self._quantize(staged, the_plan, dynamic, widen or [])
                break
            except adapter.QuantizerFailure as exc:
                planned = {c.name for c in the_plan.candidates if c.name not in the_plan.excluded}
                node = next((n for n in exc.nodes if n in planned), None)
                if node is None or len(failed) >= MAX_FAILING_NODES:
                    raise
                failed.append(node)
                the_plan = replace(the_plan, excluded={
                    **the_plan.excluded, node: f"onnxruntime's quantizer failed on it ({exc.cause})"})
                warnings.append(f"onnxruntime's quantizer failed on node {node!r} ({exc.cause}): left in float, "
                                "the rest quantized")
        samples = read if read is not None else samples
        quant_seconds = time.perf_counter() - t0
        quantized_model = _declare_used_domains_only(staged)
        check_loads(staged, failure="onnxruntime produced a model it cannot load",
                    hint="keep pre-processing on (it upgrades old opsets), or try --per-tensor; no output was written")
        _check_scales(quantized_model, staged)
        result_ops, skipped = self._outcome(quantized_model, the_plan, dynamic)
        config = self.config
        return QuantizeResult(
            input_path=str(self.loaded.path), output_path=str(self.out), mode=self.mode,
            mode_reason=self.mode_reason, config={**config.to_dict(), "mode": self.mode.value,
                                                  "subgraphs": self.subgraphs},
            data=self.data.to_dict() if self.data else None, calibration_samples=samples,
            op_types=result_ops, skipped=skipped, bytes_before=self.loaded.file_bytes,
            bytes_after=file_nbytes(staged),
            prepare_seconds=prepared.seconds,
            calibration_seconds=self.calibration.seconds if self.calibration else 0.0,
            quantization_seconds=quant_seconds,
            preprocess=prepared.passes.to_dict() if config.preprocess or config.fixed_shapes else None,
            warnings=warnings, float_outputs=freed,
        )

    def _quantize(self, staged: Path, the_plan: Plan, dynamic: list[str],
                  widen: list[str]) -> tuple[int, int | None]:
        """One run of onnxruntime's quantizers into `staged`: the outputs freed, and the samples read
        when onnxruntime calibrated by itself."""
        with quiet_onnxruntime():
            if self.mode is Mode.DYNAMIC:
                adapter.quantize_dynamic(self.prepared.path, staged, the_plan, self.config, self.external,
                                         the_plan.nodes_to_exclude)
                return 0, None
            mixed = staged.with_name("mixed-" + staged.name) if dynamic else staged
            freed, read = self._static(mixed, the_plan, self.widened_tensors(widen))
            if dynamic:
                adapter.quantize_dynamic(mixed, staged, the_plan, self.config, self.external, [], only=dynamic)
            return freed, read

    def _static(self, dest: Path, the_plan: Plan, wide: list[str]) -> tuple[int, int | None]:
        """Static QDQ of the main graph into `dest`, then the float-outputs pass, then dynamic
        quantization of the subgraph bodies. Returns the outputs freed and, when onnxruntime
        calibrated by itself, the samples it read."""
        src = self.prepared.path
        static_out = dest.with_name("static-" + dest.name) if the_plan.subgraph_candidates and the_plan.subgraphs \
            else dest
        read = None
        if not the_plan.main_candidates:  # only subgraph bodies to quantize (below): nothing static to do
            static_out = src
        elif self._ranges_file is not None:
            adapter.quantize_static(src, static_out, self._ranges_file, the_plan, self.config, self.external, wide)
        else:  # older onnxruntime builds (onnxruntime-openvino 1.24) calibrate here
            assert self.data is not None
            with progress.task("calibration", total=self.data.expected_samples()) as step:
                reader = adapter.CalibrationReader(self.data, step)
                adapter.quantize_static(src, static_out, reader, the_plan, self.config, self.external, wide)
            read = reader.count
        freed = free_outputs(static_out, the_plan) if self.config.float_outputs and static_out != src else 0
        if static_out != dest:
            subgraph_nodes = set(the_plan.subgraph_candidates)
            main_and_excluded = [c.name for c in the_plan.candidates if c.name not in subgraph_nodes]
            adapter.quantize_dynamic(static_out, dest, the_plan, self.config, self.external, sorted(main_and_excluded))
        return freed, read

    def _outcome(self, quantized: onnx.ModelProto, the_plan: Plan,
                 dynamic: list[str]) -> tuple[dict[str, OpTypeCount], list[SkippedNode]]:
        """Per op type, candidates and nodes quantized; every candidate left in float with its reason.
        Nothing quantized is an error: no output is written then."""
        done = quantized_names(quantized)
        if self.mode is Mode.STATIC:
            present = {gn.node.name for gn in iter_nodes(quantized.graph)}
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
                reason = skip_reason(c, the_plan)
                if c.name in dynamic:  # taken out of static QDQ for dynamic quantization, which refused it
                    reason += f"; left in float: {skip_reason(c, replace(the_plan, mode=Mode.DYNAMIC, excluded={}))}"
                skipped.append(SkippedNode(c.name, c.op_type, c.graph, reason))
        if not any(c.quantized for c in result_ops.values()):
            reasons = sorted({s.reason for s in skipped})
            raise NothingQuantizedError(
                f"nothing to quantize in {self.loaded.path}: {len(the_plan.candidates)} candidate node(s), "
                "none quantized",
                hint="check --op-types / --exclude-*; no output was written",
                details=tuple(reasons) or ("the model has no node of a quantizable op type",))
        return result_ops, skipped


def quantize(model: str | Path | LoadedModel, output: str | Path, data: CalibrationData | TextData | None = None, *,
             config: QuantizeConfig | None = None, force: bool = False) -> QuantizeResult:
    """Quantize `model` into `output` (QDQ for static, integer ops for dynamic) and report what happened.

    The output is written atomically; the input is never modified. Raises NothingQuantizedError,
    without writing anything, when no node would be quantized.
    """
    config = config or QuantizeConfig()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    trained = qat_weights(loaded.proto) if quantization_kinds(loaded.proto)["qdq"] else []
    if trained or config.mode is Mode.QAT:
        return _fold(loaded, output, data, config, trained, force)
    if config.mode is Mode.WEIGHT_ONLY:
        text = data if isinstance(data, TextData) else None
        result = quantize_weights(loaded, output, text, config=config, force=force)
        if data is not None and text is None:
            result.warnings.append("weight-only quantization reads calibration text (--calib-text), not input "
                                   "samples: calibration data not used")
        elif text is not None and config.weight_only.method is not WeightMethod.GPTQ:
            result.warnings.append("round-to-nearest needs no calibration: the text was not used (--method gptq "
                                   "reads it)")
        return result
    if isinstance(data, TextData):
        raise UsageError("calibration text is for --mode weight-only", hint="give --calib DATA for static mode")
    out = Path(output)
    check_output_path(out, inputs=(loaded.path,), force=force)
    with staging_dir(out) as work:
        job = QuantizeJob(loaded, out, data, config, work)
        job.prepare()
        job.calibrate()
        staged = work / out.name
        result = job.quantize(staged)
        result.bytes_after = move_into_place(staged, out)
    return result


def _fold(loaded: LoadedModel, output: str | Path, data: CalibrationData | TextData | None, config: QuantizeConfig,
          trained: list[QatWeight], force: bool) -> QuantizeResult:
    """A QAT export: its weights folded with the trained scales (`qat.fold_qat`), nothing calibrated."""
    if not trained:
        raise UsageError(f"--mode qat folds the float weights of a QAT export, and {loaded.path} has no weight "
                         "behind QuantizeLinear", hint="drop --mode qat to quantize it after training")
    if config.mode not in (None, Mode.QAT):
        raise UsageError(f"{loaded.path} is a QAT export ({len(trained)} float weights behind Q/DQ): --mode "
                         f"{config.mode} would quantize it again", hint="drop --mode: its weights are folded with "
                                                                        "the scales training chose")
    result = fold_qat(loaded, output, config=config, force=force)
    if data is not None:
        result.warnings.append("a QAT export keeps the scales training chose: the calibration data was not used")
    return result


def _declare_used_domains_only(path: Path) -> onnx.ModelProto:
    """Keep the opset imports a node or local function uses (ai.onnx always): onnxruntime's optimiser
    declares every domain it knows (ai.onnx.training, com.microsoft.nchwc, org.pytorch.aten, …),
    which other converters and runtimes reject. Returns the model's graph as written (weight data
    in a sidecar stays there)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    used = {gn.node.domain for gn in iter_nodes(model.graph)}
    used |= {f.domain for f in model.functions} | {n.domain for f in model.functions for n in f.node}
    used = {"" if d == "ai.onnx" else d for d in used} | {""}
    kept = [o for o in model.opset_import if ("" if o.domain == "ai.onnx" else o.domain) in used]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
        onnx.save(model, str(path))  # the graph only: a sidecar stays as it is
    return model


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
