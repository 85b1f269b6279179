"""quantize → validate → benchmark in one call, with one report.

Each step is the public function of its own module; this only chains them and decides what the
benchmark runs on (the evaluation data's first batch, else synthetic inputs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.benchmark import BenchmarkConfig, batch_feeds, benchmark
from qconvert.calibration import open_data
from qconvert.config import DataConfig, QuantizeConfig
from qconvert.errors import OutputError
from qconvert.model import LoadedModel, input_specs, write_atomically
from qconvert.quantize import quantize
from qconvert.results import SCHEMA_VERSION, BenchmarkResult, Gate, QuantizeResult, ValidateResult, versions
from qconvert.search import SearchConfig, SearchResult, Trial, search_quantize
from qconvert.validate import ValidateConfig, validate

if TYPE_CHECKING:
    from qconvert.calibration import CalibrationData


@dataclass
class PipelineResult:
    quantize: QuantizeResult
    validate: ValidateResult | None
    benchmark: BenchmarkResult | None
    search: SearchResult | None = None
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def gates(self) -> list[Gate]:
        return [*(self.validate.gates if self.validate else []), *(self.benchmark.gates if self.benchmark else [])]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def raise_for_gates(self) -> None:
        for step in (self.validate, self.benchmark):
            if step is not None:
                step.raise_for_gates()

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION, "command": "pipeline",
            "quantize": self.quantize.to_dict(),
            "search": self.search.to_dict() if self.search else None,
            "validate": self.validate.to_dict() if self.validate else None,
            "benchmark": self.benchmark.to_dict() if self.benchmark else None,
            "passed": self.passed, "versions": self.versions,
        }


def quantize_and_measure(model: LoadedModel, output: str | Path, calibration: CalibrationData | None, *,
                         config: QuantizeConfig, force: bool = False, evaluation: DataConfig | None = None,
                         validate_config: ValidateConfig | None = None,
                         benchmark_config: BenchmarkConfig | None = None, search: SearchConfig | None = None,
                         on_trial: Callable[[Trial], None] | None = None) -> PipelineResult:
    """Quantize `model` into `output` (searching for the fewest nodes to keep in float when
    `search` is given); then, when `evaluation` is given, validate against FP32 on it; then, when
    `benchmark_config` is given, time FP32 against quantized side by side."""
    specs = input_specs(model.proto)
    validated = None
    searched = None
    if search is not None:
        result, validated, searched = search_quantize(model, output, calibration, config=config, search=search,
                                                      force=force, on_trial=on_trial)
    else:
        result = quantize(model, output, calibration, config=config, force=force)
    if evaluation is not None:
        validated = validate(model.path, output, open_data(evaluation, specs), config=validate_config)
    timed = None
    if benchmark_config is not None:
        source = evaluation or (search.evaluation if search else DataConfig("synthetic"))
        feeds = batch_feeds(open_data(source, specs), benchmark_config.batch)
        timed = benchmark([model.path, output], feeds, config=replace(benchmark_config, reference_first=True))
    return PipelineResult(quantize=result, validate=validated, benchmark=timed, search=searched)


def write_report(payload: dict[str, object], path: str | Path) -> None:
    """Write a JSON report atomically: a temporary file beside it, then a rename."""
    target = Path(path)
    try:
        write_atomically(target, json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the report {target}: {exc.strerror or exc}",
                          hint="check the folder exists and is writable") from exc
