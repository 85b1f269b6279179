"""Result objects returned by every public step; `to_dict()` is the JSON the CLI prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of qconvert and the libraries that decide its output."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("qconvert", "onnx", "onnxruntime", "numpy"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
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

    @property
    def quantized_format(self) -> str | None:
        found = [kind for kind, n in self.quantization.items() if n]
        return "+".join(found) if found else None

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "inspect", "path": self.path,
            "ir_version": self.ir_version, "opsets": self.opsets, "producer": self.producer,
            "inputs": self.inputs, "outputs": self.outputs, "op_types": self.op_types,
            "nodes": sum(self.op_types.values()), "subgraph_nodes": self.subgraph_nodes,
            "parameters": self.parameters,
            "parameter_count": sum(v["count"] for v in self.parameters.values()),
            "parameter_bytes": sum(v["bytes"] for v in self.parameters.values()),
            "external_data": self.external_data, "file_bytes": self.file_bytes,
            "quantized": self.quantized_format, "quantization_nodes": self.quantization,
            "candidates": self.candidates,
        }


@dataclass
class QuantizeResult:
    input_path: str
    output_path: str
    mode: str
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

    def skip_reasons(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "quantize",
            "input": self.input_path, "output": self.output_path,
            "mode": self.mode, "mode_reason": self.mode_reason, "smoke_run": self.smoke_run,
            "nodes": {"quantized": self.quantized_nodes, "candidates": self.candidate_nodes},
            "op_types": {op: {"candidates": c.candidates, "quantized": c.quantized}
                         for op, c in sorted(self.op_types.items())},
            "skipped": [s.to_dict() for s in self.skipped],
            "size": {"before_bytes": self.bytes_before, "after_bytes": self.bytes_after,
                     "ratio": round(self.size_ratio, 3)},
            "time_seconds": {"prepare": round(self.prepare_seconds, 3),
                             "calibration": round(self.calibration_seconds, 3),
                             "quantization": round(self.quantization_seconds, 3)},
            "calibration": {**(self.data or {}), "samples": self.calibration_samples} if self.data else None,
            "preprocess": self.preprocess,
            "config": self.config, "warnings": list(self.warnings), "versions": self.versions,
        }
