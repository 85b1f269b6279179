"""Result objects returned by every public step; `to_dict()` is the JSON the CLI prints."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from qconvert.config import (
    CPU,
    BenchmarkConfig,
    EPConfig,
    LanguageConfig,
    Mode,
    PipelineJob,
    SearchConfig,
    Sensitive,
    StrEnum,
)
from qconvert.errors import ExitCode, QconvertError

SCHEMA_VERSION = 2  # 2: pipeline validate/benchmark are lists (one per provider); latency samples


@functools.cache
def onnxruntime_distribution() -> str:
    """The package that installed the `onnxruntime` module: `onnxruntime`, or a build such as
    `onnxruntime-openvino` or `onnxruntime-gpu` that replaces it. Only the `onnxruntime*` records
    beside the module are read (`packages_distributions()` reads every installed package's, ~0.2 s)."""
    import importlib.util
    from importlib.metadata import Distribution

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return "onnxruntime"
    for info in sorted(Path(spec.origin).parent.parent.glob("onnxruntime*.dist-info")):
        dist = Distribution.at(info)
        if any(str(f) == "onnxruntime/__init__.py" for f in dist.files or []):
            return str(dist.metadata["Name"])
    return "onnxruntime"


def versions() -> dict[str, str]:
    """Versions of qconvert and the libraries that decide its output; a replacement onnxruntime
    build (onnxruntime-openvino, …) is named beside its version."""
    from importlib.metadata import PackageNotFoundError, version

    runtime = onnxruntime_distribution()
    found = {}
    for key, dist in (("qconvert", "qconvert"), ("onnx", "onnx"), ("onnxruntime", runtime), ("numpy", "numpy")):
        try:
            found[key] = version(dist) + ("" if dist == key else f" ({dist})")
        except PackageNotFoundError:
            found[key] = "not installed"
    return found


@dataclass(frozen=True)
class SkippedNode:
    name: str
    op_type: str
    graph: str  # '' for the main graph
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "op_type": self.op_type, "graph": self.graph or "main", "reason": self.reason}


@dataclass
class OpTypeCount:
    candidates: int = 0
    quantized: int = 0


@dataclass
class InspectResult:
    path: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, object]]
    outputs: list[dict[str, object]]
    op_types: dict[str, int]
    subgraph_nodes: int
    parameters: dict[str, dict[str, int]]  # dtype -> {"count": n, "bytes": b}
    external_data: bool
    file_bytes: int
    quantization: dict[str, int]  # "qdq" / "qoperator" / "integer" -> node count
    candidates: dict[str, dict[str, int]]  # mode -> op type -> candidate count
    decoder: dict[str, object] | None = None  # a language-model decoder's signature (model.decoder)
    bytes_by_role: dict[str, int] | None = None  # decoders: embedding / lm_head / block / other bytes
    slow_nodes: dict[str, int] = field(default_factory=dict)  # MatMulNBits on the slow CPU path, by reason
    qat: dict[str, object] | None = None  # a QAT export: float weights behind Q/DQ (quantization.qat)

    @property
    def nodes(self) -> int:
        return sum(self.op_types.values())

    @property
    def parameter_count(self) -> int:
        return sum(v["count"] for v in self.parameters.values())

    @property
    def quantized_format(self) -> str | None:
        found = [kind for kind, n in self.quantization.items() if n]
        return "+".join(found) if found else None

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "inspect", "path": self.path,
            "ir_version": self.ir_version, "opsets": self.opsets, "producer": self.producer,
            "inputs": self.inputs, "outputs": self.outputs, "op_types": self.op_types,
            "nodes": self.nodes, "subgraph_nodes": self.subgraph_nodes,
            "parameters": self.parameters, "parameter_count": self.parameter_count,
            "parameter_bytes": sum(v["bytes"] for v in self.parameters.values()),
            "external_data": self.external_data, "file_bytes": self.file_bytes,
            "quantized": self.quantized_format, "quantization_nodes": self.quantization,
            "candidates": self.candidates, "decoder": self.decoder, "bytes_by_role": self.bytes_by_role,
            "slow_nodes": self.slow_nodes, "qat": self.qat,
        }


@dataclass(frozen=True)
class QuickCheck:
    """The quantized model against FP32 on a few calibration samples, at the end of a quantize."""

    samples: int
    worst_cosine: float  # the mean cosine of the output furthest from FP32
    output: str  # that output

    def to_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "worst_cosine": number(self.worst_cosine), "output": self.output}


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight of a weight-only model: its node, role (embedding, lm_head, block), elements, the
    bits it got (None: kept float) and the bytes it is stored in (0 when it reads a tied weight)."""

    node: str
    op_type: str
    role: str
    params: int
    bits: int | None
    stored_bytes: int
    tied_to: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "op_type": self.op_type, "role": self.role, "params": self.params,
                "bits": self.bits, "stored_bytes": self.stored_bytes, "tied_to": self.tied_to}


@dataclass
class QuantizeResult:
    input_path: str
    output_path: str
    mode: Mode
    mode_reason: str
    config: dict[str, object]
    data: dict[str, object] | None
    calibration_samples: int
    op_types: dict[str, OpTypeCount]
    skipped: list[SkippedNode]
    bytes_before: int
    bytes_after: int
    prepare_seconds: float
    calibration_seconds: float
    quantization_seconds: float
    preprocess: dict[str, object] | None
    warnings: list[str] = field(default_factory=list)
    float_outputs: int = 0  # quantized MatMul/Gemm nodes whose outputs stay float (no reader is quantized)
    check: QuickCheck | None = None  # against FP32 on a few calibration samples (static mode)
    weights: list[QuantizedWeight] = field(default_factory=list)  # weight-only mode: every candidate weight
    copied: list[str] = field(default_factory=list)  # model-folder files written beside the output
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def quantized_nodes(self) -> int:
        return sum(c.quantized for c in self.op_types.values())

    @property
    def candidate_nodes(self) -> int:
        return sum(c.candidates for c in self.op_types.values())

    @property
    def size_ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 0.0

    @property
    def smoke_run(self) -> bool:
        return bool(self.data and self.data.get("synthetic"))

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "quantize",
            "input": self.input_path, "output": self.output_path,
            "mode": self.mode.value, "mode_reason": self.mode_reason, "smoke_run": self.smoke_run,
            "nodes": {"quantized": self.quantized_nodes, "candidates": self.candidate_nodes,
                      "float_outputs": self.float_outputs},
            "op_types": {op: {"candidates": c.candidates, "quantized": c.quantized}
                         for op, c in sorted(self.op_types.items())},
            "skipped": [s.to_dict() for s in self.skipped],
            "size": {"before_bytes": self.bytes_before, "after_bytes": self.bytes_after,
                     "ratio": round(self.size_ratio, 3)},
            "time_seconds": {"prepare": round(self.prepare_seconds, 3),
                             "calibration": round(self.calibration_seconds, 3),
                             "quantization": round(self.quantization_seconds, 3)},
            "calibration": {**(self.data or {}), "samples": self.calibration_samples} if self.data else None,
            "preprocess": self.preprocess, "check": self.check.to_dict() if self.check else None,
            "config": self.config, "warnings": list(self.warnings), "versions": self.versions,
            "weights": [w.to_dict() for w in self.weights], "copied": list(self.copied),
        }


@dataclass
class ConvertResult:
    """A model written in 16-bit floats (`convert`): what stayed float32 and why, and what it cost."""

    input_path: str
    output_path: str
    config: dict[str, object]
    data: dict[str, object] | None
    calibration_samples: int  # 0: no activation range was checked
    float_nodes: int  # nodes that read or write float32 tensors
    kept: list[SkippedNode]  # of those, the ones left in float32, each with its reason
    bytes_before: int
    bytes_after: int
    opset_before: int
    opset_after: int
    seconds: float
    cpu_casts: int  # converted nodes onnxruntime's CPU provider has no 16-bit kernel for: they run through casts
    check: QuickCheck | None = None  # against FP32 on a few calibration samples
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def converted_nodes(self) -> int:
        return self.float_nodes - len(self.kept)

    @property
    def size_ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "convert", "input": self.input_path,
            "output": self.output_path, "to": self.config["to"],
            "nodes": {"float": self.float_nodes, "converted": self.converted_nodes, "kept_float32": len(self.kept),
                      "cpu_casts": self.cpu_casts},
            "kept": [s.to_dict() for s in self.kept],
            "range_checked": bool(self.calibration_samples),
            "calibration": {**(self.data or {}), "samples": self.calibration_samples} if self.data else None,
            "size": {"before_bytes": self.bytes_before, "after_bytes": self.bytes_after,
                     "ratio": round(self.size_ratio, 3)},
            "opset": {"before": self.opset_before, "after": self.opset_after},
            "time_seconds": round(self.seconds, 3), "check": self.check.to_dict() if self.check else None,
            "config": self.config, "warnings": list(self.warnings), "versions": self.versions,
        }


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (binary units), for tables and pages."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def number(value: float | None, digits: int = 6) -> float | None:
    """A float for JSON: rounded, and None for NaN/Inf (JSON has neither)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


@dataclass(frozen=True)
class OutputMetrics:
    """How far one output of the quantized model is from FP32, over every evaluation sample."""

    name: str
    samples: int
    mean_cosine: float
    worst_cosine: float
    worst_sample: int
    max_abs_error: float
    mean_abs_error: float
    mse: float
    sqnr_db: float  # inf when identical; NaN when the quantized output is not finite
    non_finite: int  # NaN/Inf values in the quantized output
    top1_agreement: float | None  # share of rows whose argmax matches FP32, for [batch, classes] outputs

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "samples": self.samples, "mean_cosine": number(self.mean_cosine),
            "worst_cosine": number(self.worst_cosine), "worst_sample": self.worst_sample,
            "max_abs_error": number(self.max_abs_error), "mean_abs_error": number(self.mean_abs_error),
            "mse": number(self.mse, 9), "sqnr_db": number(self.sqnr_db, 3),
            "identical": self.sqnr_db == math.inf, "non_finite": self.non_finite,
            "top1_agreement": number(self.top1_agreement),
        }


@dataclass(frozen=True)
class Gate:
    """One threshold and whether the measured value met it."""

    name: str
    threshold: float
    value: float
    passed: bool
    output: str | None = None  # the output it was judged on (its worst), when per-output

    def describe(self) -> str:
        where = f" ({self.output})" if self.output else ""
        relation = "<=" if self.name.startswith("max") else ">="
        verdict = "meets" if self.passed else "misses"
        return f"{self.name}{where}: {self.value:.4g} {verdict} {relation} {self.threshold:g}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "threshold": self.threshold, "value": number(self.value),
                "passed": self.passed, "output": self.output}


def provider_gates(placement: Placement | None, path: str, min_share: float | None = None) -> list[Gate]:
    """A run whose provider took no node fails whatever its numbers: a CPU figure must never pass
    for an NPU one. With `min_share`, the provider must also take that share of the nodes."""
    if placement is None:
        return []
    found = [Gate("min_provider_nodes", 1, placement.nodes_on_provider, False, path)] if placement.all_on_cpu else []
    if min_share is not None:
        found.append(Gate("min_provider_share", min_share, placement.share(), placement.share() >= min_share, path))
    return found


class Gated:
    """A result judged by gates: it passes when every gate does."""

    gates: list[Gate]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def raise_for_gates(self) -> None:
        """Raise GateFailedError listing every missed gate (like requests' raise_for_status)."""
        from qconvert.errors import GateFailedError

        failed = self.failed_gates()
        if failed:
            raise GateFailedError(f"{len(failed)} of {len(self.gates)} gate(s) failed",
                                  hint="see the gates above; the result itself is complete",
                                  details=tuple(g.describe() for g in failed))


@dataclass
class ValidateResult(Gated):
    fp32_path: str
    quantized_path: str
    data: dict[str, object]
    samples: int
    ep: EPConfig  # where the quantized model ran
    outputs: list[OutputMetrics]
    fp32_accuracy: float | None
    quantized_accuracy: float | None
    accuracy_drop: float | None  # points
    gates: list[Gate]
    placement: Placement | None = None  # of the quantized model, off the CPU provider
    warnings: list[str] = field(default_factory=list)
    language: LanguageComparison | None = None  # validation on text (language models)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "validate",
            "language": self.language.to_dict() if self.language else None,
            "fp32": self.fp32_path, "quantized": self.quantized_path, "data": self.data, "samples": self.samples,
            "ep": self.ep.to_dict(), "placement": self.placement.to_dict() if self.placement else None,
            "outputs": [o.to_dict() for o in self.outputs],
            "accuracy": None if self.fp32_accuracy is None else {
                "fp32_top1": number(self.fp32_accuracy), "quantized_top1": number(self.quantized_accuracy),
                "drop_points": number(self.accuracy_drop, 3)},
            "gates": [g.to_dict() for g in self.gates], "passed": self.passed, "warnings": list(self.warnings),
            "versions": self.versions,
        }


@dataclass
class Latency:
    """One model's timings (milliseconds per batch) and, off the CPU provider, its placement."""

    path: str
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput: float  # samples per second at the benchmark's batch size
    speedup: float  # median latency of the first model / this model's
    placement: Placement | None = None
    samples_ms: list[float] = field(default_factory=list)  # every timed run, in the order run

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path, "runs": self.runs, "mean_ms": number(self.mean_ms, 4), "p50_ms": number(self.p50_ms, 4),
            "p90_ms": number(self.p90_ms, 4), "p99_ms": number(self.p99_ms, 4), "min_ms": number(self.min_ms, 4),
            "throughput_per_s": number(self.throughput, 2), "speedup_vs_first": number(self.speedup, 4),
            "placement": self.placement.to_dict() if self.placement else None,
            "samples_ms": [round(v, 4) for v in self.samples_ms],
        }


@dataclass
class BenchmarkResult(Gated):
    models: list[Latency]
    config: BenchmarkConfig
    provider: str
    gates: list[Gate]
    inputs: str | None = None  # what the runs were fed, when the benchmark read the data itself
    decoding: list[DecodeTiming] = field(default_factory=list)  # language models (config.decode)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "benchmark", "provider": self.provider,
            "config": self.config.to_dict(), "inputs": self.inputs, "models": [m.to_dict() for m in self.models],
            "decoding": [d.to_dict() for d in self.decoding], "warnings": list(self.warnings),
            "fell_back_to_cpu": [m.path for m in self.models if m.placement and m.placement.all_on_cpu],
            "gates": [g.to_dict() for g in self.gates], "passed": self.passed, "versions": self.versions,
        }


def decibels(value: float | None) -> float | str | None:
    """SQNR for JSON: infinite (exact) as the string "inf", NaN (broken) as null."""
    if value is None or math.isnan(value):
        return None
    return ("inf" if value > 0 else "-inf") if math.isinf(value) else round(value, 3)


@dataclass(frozen=True)
class NodeError:
    """One node's error at its output: what it adds on its own, and the total it passes on."""

    node: str
    op_type: str
    tensor: str
    own_sqnr_db: float  # output computed from FP32 inputs, inside the quantized graph
    own_cosine: float
    total_sqnr_db: float  # output in the quantized model, upstream error included
    total_cosine: float
    carried_share: float  # share of the total noise power that came from upstream
    weight_sqnr_db: float | None  # worst of its dequantized weights, when it has any

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node, "op_type": self.op_type, "tensor": self.tensor,
            "own_sqnr_db": decibels(self.own_sqnr_db), "own_cosine": number(self.own_cosine),
            "total_sqnr_db": decibels(self.total_sqnr_db), "total_cosine": number(self.total_cosine),
            "carried_share": number(self.carried_share, 4), "weight_sqnr_db": decibels(self.weight_sqnr_db),
        }


@dataclass(frozen=True)
class TensorError:
    """A quantized tensor, dequantized, against its FP32 value."""

    name: str
    kind: str  # "activation" or "weight"
    sqnr_db: float
    cosine: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "sqnr_db": decibels(self.sqnr_db),
                "cosine": number(self.cosine)}


@dataclass
class AnalyzeResult:
    fp32_path: str
    quantized_path: str
    reference: str  # which FP32 graph the names were matched against
    quantized_tensors: int  # quantized tensors found in both graphs
    data: dict[str, object]
    samples: int
    matched_tensors: int
    nodes: list[NodeError]  # worst own error first
    ranked_nodes: int
    tensors: list[TensorError]  # worst first
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "analyze", "fp32": self.fp32_path,
            "quantized": self.quantized_path, "reference": self.reference, "data": self.data,
            "samples": self.samples, "quantized_tensors": self.quantized_tensors,
            "matched_tensors": self.matched_tensors, "ranked_nodes": self.ranked_nodes,
            "nodes": [n.to_dict() for n in self.nodes], "tensors": [t.to_dict() for t in self.tensors],
            "versions": self.versions,
        }


@dataclass(frozen=True)
class Placement:
    """Which provider onnxruntime gave each node of the (basic-optimized) graph at partitioning."""

    provider: str
    nodes: int
    nodes_on_provider: int
    quantized_nodes: int  # Q/DQ and integer ops
    quantized_on_provider: int
    cpu_op_types: dict[str, int]  # op types left to the CPU provider, most frequent first

    @property
    def all_on_cpu(self) -> bool:
        """Nothing ran on the provider asked for: its number would be a CPU number."""
        return self.provider != CPU and self.nodes_on_provider == 0

    def share(self) -> float:
        return self.nodes_on_provider / self.nodes if self.nodes else 0.0

    @property
    def mostly_on_cpu(self) -> bool:
        """The provider took less than half of the nodes, or of the quantized ones: its figures are
        mostly the CPU provider's."""
        quantized = self.quantized_on_provider / self.quantized_nodes if self.quantized_nodes else 1.0
        return self.provider != CPU and (self.share() < 0.5 or quantized < 0.5)

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider, "nodes": self.nodes, "nodes_on_provider": self.nodes_on_provider,
            "share": round(self.share(), 4), "quantized_nodes": self.quantized_nodes,
            "quantized_on_provider": self.quantized_on_provider, "cpu_op_types": self.cpu_op_types,
            "all_on_cpu": self.all_on_cpu,
        }


@dataclass
class Trial:
    index: int
    kept: list[str]  # node names taken out of 8-bit static QDQ
    handling: Sensitive  # what happened to them: kept in float, quantized dynamically, or widened to 16 bits
    worst_cosine: float  # lowest mean cosine over the outputs
    sqnr_db: float  # lowest over the outputs
    accuracy_drop: float | None  # points, with labels
    passed: bool
    p50_ms: float | None = None
    speedup: float | None = None  # FP32 median latency / this one's

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "sensitive_nodes": len(self.kept), "handling": self.handling.value,
                "nodes": self.kept,
                "worst_cosine": number(self.worst_cosine), "sqnr_db": number(self.sqnr_db, 3),
                "accuracy_drop": number(self.accuracy_drop, 3), "passed": self.passed,
                "p50_ms": number(self.p50_ms, 4), "speedup_vs_fp32": number(self.speedup, 3)}


@dataclass(frozen=True)
class KeptNode:
    node: str
    op_type: str
    rank: int | None  # 1 = the largest own error; None: kept with its whole op type, not ranked
    own_sqnr_db: float
    total_sqnr_db: float

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "op_type": self.op_type, "rank": self.rank,
                "own_sqnr_db": number(self.own_sqnr_db, 3), "total_sqnr_db": number(self.total_sqnr_db, 3)}


@dataclass
class SearchResult:
    config: SearchConfig
    trials: list[Trial]
    chosen: int  # index of the trial written to the output
    kept: list[KeptNode]
    ranked_nodes: int  # nodes the analysis ranked (0 when the first trial met the target)
    quantized: QuantizeResult  # the chosen trial's model, as written to the output
    validation: ValidateResult  # the chosen trial's measurement: its gates say whether the target was met
    fp32_p50_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.trials[self.chosen].passed

    def to_dict(self) -> dict[str, object]:
        return {"config": self.config.to_dict(), "met": self.met, "chosen_trial": self.chosen,
                "sensitive_nodes": [k.to_dict() for k in self.kept], "ranked_nodes": self.ranked_nodes,
                "fp32_p50_ms": number(self.fp32_p50_ms, 4), "trials": [t.to_dict() for t in self.trials],
                "notes": self.notes}


@dataclass(frozen=True)
class PassResult:
    name: str
    changed: int  # how many things the pass changed; 0 means it was a no-op
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "changed": self.changed, "note": self.note}


@dataclass
class PrepareResult:
    passes: list[PassResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"passes": [p.to_dict() for p in self.passes], "warnings": list(self.warnings)}


class Status(StrEnum):
    PASSED = "passed"  # ran, and met every gate
    MISSED = "missed"  # ran, and missed a gate
    FAILED = "failed"  # did not finish: an error or a crash


@dataclass
class BatchItem:
    model: str
    output: str
    status: Status
    seconds: float
    result: PipelineResult | None = None  # when it ran
    error: QconvertError | None = None  # when it failed
    worker: str | None = None  # where it ran: a local process, or a Dask worker's address
    waited: float = 0.0  # seconds from the batch's start until it started

    @property
    def exit_code(self) -> int:
        if self.status is Status.PASSED:
            return ExitCode.OK
        if self.status is Status.MISSED:
            return ExitCode.GATE_FAILED
        return int(self.error.exit_code) if self.error is not None else int(ExitCode.INTERNAL)

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "output": self.output, "status": self.status.value,
                "seconds": round(self.seconds, 3), "worker": self.worker, "waited_seconds": round(self.waited, 3),
                "error": self.error.to_dict() if self.error else None,
                "result": self.result.report() if self.result else None}


@dataclass
class BatchResult:
    items: list[BatchItem]
    workers: int
    seconds: float
    executor: str = "local"  # local, or dask with its scheduler's address
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def passed(self) -> bool:
        return all(i.status is Status.PASSED for i in self.items)

    @property
    def exit_code(self) -> int:
        """The first failed model's exit code; else 3 when any model missed a gate; else 0."""
        failed = [i for i in self.items if i.status is Status.FAILED]
        if failed:
            return failed[0].exit_code
        return ExitCode.GATE_FAILED if not self.passed else ExitCode.OK

    def counts(self) -> dict[str, int]:
        return {s.value: sum(i.status is s for i in self.items) for s in list(Status)}

    def to_dict(self) -> dict[str, object]:
        return {"schema_version": SCHEMA_VERSION, "command": "batch", "workers": self.workers,
                "executor": self.executor, "seconds": round(self.seconds, 3), "counts": self.counts(),
                "passed": self.passed, "models": [i.to_dict() for i in self.items], "warnings": list(self.warnings),
                "versions": self.versions}


@dataclass(frozen=True)
class WeightSensitivity:
    """A weight (or a tied embedding and lm_head, one matrix) ranked by what it alone costs at 4 bits on
    the evaluation text (the KL divergence from FP32 with only it at 4 bits) per byte 8 bits add."""

    nodes: tuple[str, ...]
    role: str
    rank: int
    kl: float
    extra_bytes: int  # bytes 8 bits take beyond 4
    eight_bit: bool  # chosen for 8 bits by the search

    def to_dict(self) -> dict[str, object]:
        return {"nodes": list(self.nodes), "role": self.role, "rank": self.rank, "kl": number(self.kl, 8),
                "extra_bytes": self.extra_bytes, "eight_bit": self.eight_bit}


@dataclass(frozen=True)
class WeightTrial:
    """One model the weight-only search wrote and measured on the evaluation text."""

    index: int
    eight_bit: int  # the most sensitive weights in 8 bits
    file_bytes: int
    perplexity_ratio: float
    top1_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "eight_bit": self.eight_bit, "file_bytes": self.file_bytes,
                "perplexity_ratio": number(self.perplexity_ratio, 6), "top1_agreement": number(self.top1_agreement, 6),
                "passed": self.passed}


@dataclass
class WeightSearchResult:
    """The weight-only search: its trials, every weight ranked, and whether the text gates were met."""

    trials: list[WeightTrial]
    ranking: list[WeightSensitivity]
    met: bool
    windows: int  # evaluation windows each trial was measured on

    def to_dict(self) -> dict[str, object]:
        return {"trials": [t.to_dict() for t in self.trials], "ranking": [r.to_dict() for r in self.ranking],
                "met": self.met, "windows": self.windows}


@dataclass
class PipelineResult:
    quantize: QuantizeResult
    validate: list[ValidateResult] = field(default_factory=list)  # one per provider
    benchmark: list[BenchmarkResult] = field(default_factory=list)  # one per provider
    search: SearchResult | None = None
    analyze: AnalyzeResult | None = None
    job: PipelineJob | None = None  # the resolved configuration
    weight_search: WeightSearchResult | None = None  # weight-only: the 8-bit weights chosen on the text
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def gates(self) -> list[Gate]:
        return [g for step in (*self.validate, *self.benchmark) for g in step.gates]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def measured(self) -> bool:
        """Whether any step ran after quantize."""
        return bool(self.validate or self.benchmark or self.search or self.analyze or self.weight_search)

    def report(self) -> dict[str, object]:
        """The report: the whole pipeline's when any step ran after quantize, else quantize's own."""
        return self.to_dict() if self.measured else self.quantize.to_dict()

    def raise_for_gates(self) -> None:
        for step in (*self.validate, *self.benchmark):
            step.raise_for_gates()

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "pipeline", "job": self.job.to_dict() if self.job else None,
            "quantize": self.quantize.to_dict(),
            "search": self.search.to_dict() if self.search else None,
            "validate": [v.to_dict() for v in self.validate],
            "benchmark": [b.to_dict() for b in self.benchmark],
            "analyze": self.analyze.to_dict() if self.analyze else None,
            "weight_search": self.weight_search.to_dict() if self.weight_search else None,
            "gates": [g.to_dict() for g in self.gates], "passed": self.passed, "versions": self.versions,
        }


@dataclass(frozen=True)
class LanguageComparison:
    """A candidate decoder (typically quantized) against its reference on the same token stream.

    `kl_divergence` is the mean over scored positions of KL(reference || candidate) in nats, over
    the positions where the candidate's logits are finite; `top1_agreement` the share of scored
    positions whose argmax agrees (a non-finite candidate row never agrees). `generation_agreement`
    is the mean over prompts of the greedy generations' common prefix / `generate_tokens`;
    `identical_generations` the prompts generated identically throughout. `non_finite_positions`
    counts scored positions whose candidate logits hold NaN or Inf; its perplexity is then inf.
    """

    reference_path: str
    candidate_path: str
    ep: EPConfig
    config: LanguageConfig
    stream_tokens: int
    tokens: int
    windows: int
    reference_perplexity: float
    candidate_perplexity: float
    perplexity_ratio: float
    kl_divergence: float
    top1_agreement: float
    prompts: int
    generation_agreement: float | None
    identical_generations: int | None
    non_finite_positions: int
    placement: Placement | None = field(default=None)

    def to_dict(self) -> dict[str, object]:
        return {
            "reference_path": self.reference_path, "candidate_path": self.candidate_path,
            "ep": self.ep.to_dict(), "config": self.config.to_dict(), "stream_tokens": self.stream_tokens,
            "tokens": self.tokens, "windows": self.windows,
            "reference_perplexity": number(self.reference_perplexity, 4),
            "candidate_perplexity": number(self.candidate_perplexity, 4),
            "perplexity_ratio": number(self.perplexity_ratio, 6), "kl_divergence": number(self.kl_divergence, 8),
            "top1_agreement": number(self.top1_agreement, 6), "prompts": self.prompts,
            "generation_agreement": number(self.generation_agreement, 6),
            "identical_generations": self.identical_generations, "non_finite_positions": self.non_finite_positions,
            "placement": self.placement.to_dict() if self.placement else None,
        }


@dataclass(frozen=True)
class DecodeTiming:
    """One model's generation speed: medians over `rounds` timed rounds, and the samples behind them."""

    path: str
    prompt_tokens: int
    new_tokens: int
    rounds: int
    kv_cache: bool
    prefill_ms: float  # median time to run the prompt in one call
    decode_tokens_per_s: float  # median over rounds of new_tokens / the time of their new_tokens calls
    prefill_speedup: float  # median over rounds of (first model's prefill time / this one's); 1.0 for the first
    decode_speedup: float  # median over rounds of (this one's tokens/s / the first model's)
    rss_growth_bytes: int | None  # see the module docstring
    memory_measure: str | None  # "peak" (VmHWM) or "after" (VmRSS after the warm-up), None when unmeasured
    prefill_samples_ms: tuple[float, ...]
    decode_samples_tokens_per_s: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
            "rounds": self.rounds, "kv_cache": self.kv_cache, "prefill_ms": round(self.prefill_ms, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 3),
            "prefill_speedup": round(self.prefill_speedup, 4), "decode_speedup": round(self.decode_speedup, 4),
            "rss_growth_bytes": self.rss_growth_bytes, "memory_measure": self.memory_measure,
            "prefill_samples_ms": [round(v, 4) for v in self.prefill_samples_ms],
            "decode_samples_tokens_per_s": [round(v, 3) for v in self.decode_samples_tokens_per_s],
        }
