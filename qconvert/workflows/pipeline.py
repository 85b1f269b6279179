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

from qconvert.calibration import CalibrationData, open_data
from qconvert.config import (
    DEFAULT_MAX_TRIALS,
    BenchmarkConfig,
    DataConfig,
    DecodeConfig,
    EPConfig,
    Gates,
    LanguageConfig,
    Mode,
    PipelineJob,
    QuantizeConfig,
    SearchConfig,
    TextData,
    ValidateConfig,
)
from qconvert.errors import UsageError
from qconvert.measurement.analysis import analyze
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.metrics import nan_lowest
from qconvert.measurement.validation import validate
from qconvert.model.decoder import decoder_signature
from qconvert.model.loading import LoadedModel, input_specs, load_model
from qconvert.quantization.job import quantize
from qconvert.results import PipelineResult, QuantizeResult, QuickCheck, Trial
from qconvert.workflows.search import search_quantize
from qconvert.workflows.weight_search import search_weights

ANALYZE_SAMPLES = 32
CHECK_SAMPLES = 8  # calibration samples the quantized model is checked against FP32 on
WRECKED_COSINE = 0.98  # below this on those, quantize warns that the model lost its accuracy


def run_job(job: PipelineJob, *, on_trial: Callable[[Trial], None] | None = None) -> PipelineResult:
    """Load `job.model`, open its calibration data and run every step the job asks for."""
    loaded = load_model(job.model)
    data = open_data(job.calibration, input_specs(loaded.proto)) if job.calibration else job.calibration_text
    result = quantize_and_measure(loaded, job.output, data, config=job.config, force=job.force,
                                  evaluation=job.evaluation, gates=job.gates, providers=job.providers,
                                  search=job.search, benchmark_config=job.benchmark, analyze_nodes=job.analyze,
                                  on_trial=on_trial, text=job.evaluation_text, language=job.language,
                                  text_trials=job.text_trials)
    result.job = job
    return result


def quantize_and_measure(model: LoadedModel, output: str | Path, calibration: CalibrationData | TextData | None, *,
                         config: QuantizeConfig, force: bool = False, evaluation: DataConfig | None = None,
                         gates: Gates | None = None, providers: tuple[EPConfig, ...] = (EPConfig(),),
                         benchmark_config: BenchmarkConfig | None = None, search: SearchConfig | None = None,
                         analyze_nodes: bool = False, on_trial: Callable[[Trial], None] | None = None,
                         text: TextData | None = None, language: LanguageConfig | None = None,
                         text_trials: int = DEFAULT_MAX_TRIALS) -> PipelineResult:
    """Quantize `model` into `output` (searching for the fewest nodes to keep in float when
    `search` is given); then, when `evaluation` is given, validate against FP32 on it on each
    provider; then, when `benchmark_config` is given, time FP32 against quantized side by side on
    each provider; then, when `analyze_nodes`, rank the quantized nodes by their own error."""
    specs = input_specs(model.proto)
    if search is not None:
        if isinstance(calibration, TextData) or config.mode is Mode.WEIGHT_ONLY:
            raise UsageError("the accuracy search (--eval-data) keeps nodes out of static or dynamic QDQ",
                             hint="weight-only models are judged on text: --text FILE --max-ppl-ratio R")
        searched = search_quantize(model, output, calibration, config=config, search=search, force=force,
                                   on_trial=on_trial)
        result = PipelineResult(quantize=searched.quantized, search=searched,
                                validate=[] if evaluation else [searched.validation])
    elif text is not None and gates is not None and gates.on_text and config.mode is Mode.WEIGHT_ONLY and \
            config.weight_only.bits == 4:
        quantized, weights = search_weights(model, Path(output), calibration if isinstance(calibration, TextData)
                                            else None, config=config, text=text, gates=gates,
                                            language=language or LanguageConfig(), max_trials=text_trials,
                                            ep=providers[0], force=force)
        result = PipelineResult(quantize=quantized, weight_search=weights)
    else:
        result = PipelineResult(quantize=quantize(model, output, calibration, config=config, force=force))
        if isinstance(calibration, CalibrationData) and result.quantize.mode is Mode.STATIC:
            _check(model.path, Path(output), calibration, result.quantize)
    if text is not None:
        for ep in providers:
            result.validate.append(validate(model.path, output, text, config=ValidateConfig(
                gates=gates or Gates(), ep=ep, language=language or LanguageConfig())))
    if evaluation is not None:
        for ep in providers:
            result.validate.append(validate(model.path, output, open_data(evaluation, specs),
                                            config=ValidateConfig(gates=gates or Gates(), ep=ep)))
    measured_on = evaluation or (search.evaluation if search else None)
    if benchmark_config is not None and result.quantize.mode is Mode.WEIGHT_ONLY and \
            decoder_signature(model.proto, model.path) is not None:
        benchmark_config = replace(benchmark_config, decode=benchmark_config.decode or DecodeConfig(
            rounds=benchmark_config.runs or DecodeConfig().rounds), runs=None)
    if benchmark_config is not None and benchmark_config.decode is not None:
        for ep in providers:
            result.benchmark.append(benchmark([model.path, output], {}, config=replace(benchmark_config, ep=ep,
                                                                                    reference_first=True)))
    elif benchmark_config is not None:
        feeds = batch_feeds(open_data(measured_on or DataConfig("synthetic"), specs), benchmark_config.batch)
        for ep in providers:
            result.benchmark.append(benchmark([model.path, output], feeds,
                                              config=replace(benchmark_config, ep=ep, reference_first=True)))
    if analyze_nodes and measured_on is not None:
        limit = min(measured_on.max_samples or ANALYZE_SAMPLES, ANALYZE_SAMPLES)
        result.analyze = analyze(model.path, output, open_data(replace(measured_on, max_samples=limit), specs))
    return result


def quick_check(fp32: Path, output: Path, calibration: CalibrationData) -> QuickCheck:
    """The converted model against FP32 on a few calibration samples (the sessions are cheap to make
    again): the output furthest from FP32, by mean cosine."""
    few = replace(calibration, max_samples=min(calibration.max_samples or CHECK_SAMPLES, CHECK_SAMPLES))
    checked = validate(fp32, output, few)
    worst = min(checked.outputs, key=lambda o: nan_lowest(o.mean_cosine))
    return QuickCheck(checked.samples, worst.mean_cosine, worst.name)


def _check(fp32: Path, output: Path, calibration: CalibrationData, quantized: QuantizeResult) -> None:
    """A quantize that wrecked the model says so, even when nothing validates it."""
    check = quantized.check = quick_check(fp32, output, calibration)
    if not calibration.synthetic and not nan_lowest(check.worst_cosine) >= WRECKED_COSINE:
        quantized.warnings.append(
            f"the quantized model is far from FP32 on {check.samples} calibration samples: cosine "
            f"{check.worst_cosine:.4f} on output {check.output!r}; let the accuracy search keep the nodes that "
            f"break it in float: qconvert quantize {fp32} -o {output} --calib DATA --eval-data DATA --min-cosine 0.99")

