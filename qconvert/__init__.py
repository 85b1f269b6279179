"""qconvert: quantize FP32 ONNX models for CPUs and NPUs, and prove what it cost.

The library is the product; the `qconvert` command line is a thin layer over these functions,
and everything it does a Python caller can do with one import of this package.
"""

from __future__ import annotations

from qconvert.calibration import CalibrationData, open_data
from qconvert.config import (
    ActivationType,
    BenchmarkConfig,
    CalibrationMethod,
    DataConfig,
    EPConfig,
    Gates,
    Layout,
    Mode,
    PipelineJob,
    QuantizeConfig,
    SearchConfig,
    Sensitive,
    Target,
    ValidateConfig,
    WeightType,
)
from qconvert.errors import ExitCode, QconvertError
from qconvert.measurement.analysis import analyze
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.validation import validate
from qconvert.model.loading import LoadedModel, TensorSpec, input_specs, load_model, output_specs
from qconvert.presets import PRESETS, expand
from qconvert.quantization.description import describe
from qconvert.quantization.job import quantize
from qconvert.results import (
    AnalyzeResult,
    BatchResult,
    BenchmarkResult,
    InspectResult,
    PipelineResult,
    QuantizeResult,
    SearchResult,
    ValidateResult,
)
from qconvert.workflows.batch import run_batch
from qconvert.workflows.pipeline import run_job
from qconvert.workflows.search import search_quantize

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ActivationType",
    "AnalyzeResult",
    "BatchResult",
    "BenchmarkConfig",
    "BenchmarkResult",
    "CalibrationData",
    "CalibrationMethod",
    "DataConfig",
    "EPConfig",
    "ExitCode",
    "Gates",
    "InspectResult",
    "Layout",
    "LoadedModel",
    "Mode",
    "PipelineJob",
    "PipelineResult",
    "QconvertError",
    "QuantizeConfig",
    "QuantizeResult",
    "SearchConfig",
    "SearchResult",
    "Sensitive",
    "Target",
    "TensorSpec",
    "ValidateConfig",
    "ValidateResult",
    "WeightType",
    "analyze",
    "batch_feeds",
    "benchmark",
    "describe",
    "expand",
    "input_specs",
    "load_model",
    "open_data",
    "output_specs",
    "quantize",
    "run_batch",
    "run_job",
    "search_quantize",
    "validate",
]
