"""quantize → validate → benchmark (→ analyze) in one call, with one report.

Each step is the public function of its own module; this only chains them and decides what the
benchmark runs on (the evaluation data's first batch, else synthetic inputs). A `PipelineJob`
(qconvert.config) is the whole configuration of one model's run: frozen and picklable, so a batch
(`qconvert.workflows.batch`) can run it in a worker process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.calibration import open_data
from qconvert.config import (
    BenchmarkConfig,
    DataConfig,
    EPConfig,
    Gates,
    PipelineJob,
    QuantizeConfig,
    SearchConfig,
    ValidateConfig,
)
from qconvert.measurement.analysis import analyze
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.validation import validate
from qconvert.model.loading import LoadedModel, input_specs, load_model
from qconvert.quantization.job import quantize
from qconvert.results import PipelineResult, Trial
from qconvert.workflows.search import search_quantize

if TYPE_CHECKING:
    from qconvert.calibration import CalibrationData

ANALYZE_SAMPLES = 32


def run_job(job: PipelineJob, *, on_trial: Callable[[Trial], None] | None = None) -> PipelineResult:
    """Load `job.model`, open its calibration data and run every step the job asks for."""
    loaded = load_model(job.model)
    data = open_data(job.calibration, input_specs(loaded.proto)) if job.calibration else None
    result = quantize_and_measure(loaded, job.output, data, config=job.config, force=job.force,
                                  evaluation=job.evaluation, gates=job.gates, providers=job.providers,
                                  search=job.search, benchmark_config=job.benchmark, analyze_nodes=job.analyze,
                                  on_trial=on_trial)
    result.job = job
    return result


def quantize_and_measure(model: LoadedModel, output: str | Path, calibration: CalibrationData | None, *,
                         config: QuantizeConfig, force: bool = False, evaluation: DataConfig | None = None,
                         gates: Gates | None = None, providers: tuple[EPConfig, ...] = (EPConfig(),),
                         benchmark_config: BenchmarkConfig | None = None, search: SearchConfig | None = None,
                         analyze_nodes: bool = False,
                         on_trial: Callable[[Trial], None] | None = None) -> PipelineResult:
    """Quantize `model` into `output` (searching for the fewest nodes to keep in float when
    `search` is given); then, when `evaluation` is given, validate against FP32 on it on each
    provider; then, when `benchmark_config` is given, time FP32 against quantized side by side on
    each provider; then, when `analyze_nodes`, rank the quantized nodes by their own error."""
    specs = input_specs(model.proto)
    if search is not None:
        searched = search_quantize(model, output, calibration, config=config, search=search, force=force,
                                   on_trial=on_trial)
        result = PipelineResult(quantize=searched.quantized, search=searched,
                                validate=[] if evaluation else [searched.validation])
    else:
        result = PipelineResult(quantize=quantize(model, output, calibration, config=config, force=force))
    if evaluation is not None:
        for ep in providers:
            result.validate.append(validate(model.path, output, open_data(evaluation, specs),
                                            config=ValidateConfig(gates=gates or Gates(), ep=ep)))
    measured_on = evaluation or (search.evaluation if search else None)
    if benchmark_config is not None:
        feeds = batch_feeds(open_data(measured_on or DataConfig("synthetic"), specs), benchmark_config.batch)
        for ep in providers:
            result.benchmark.append(benchmark([model.path, output], feeds,
                                              config=replace(benchmark_config, ep=ep, reference_first=True)))
    if analyze_nodes and measured_on is not None:
        limit = min(measured_on.max_samples or ANALYZE_SAMPLES, ANALYZE_SAMPLES)
        result.analyze = analyze(model.path, output, open_data(replace(measured_on, max_samples=limit), specs))
    return result
