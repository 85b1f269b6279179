"""qconvert: quantize FP32 ONNX models for CPUs and NPUs, and prove what it cost.

The library is the product; the `qconvert` command line is a thin layer over these functions,
and everything it does a Python caller can do with one import of this package. Names are imported
on first use, so the command line (and `qconvert --help`) starts without numpy and onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qconvert.calibration import CalibrationData, open_data
    from qconvert.config import (
        ActivationType,
        BenchmarkConfig,
        CalibrationMethod,
        DataConfig,
        EPConfig,
        FloatConfig,
        FloatType,
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
        ConvertResult,
        InspectResult,
        PipelineResult,
        QuantizeResult,
        SearchResult,
        ValidateResult,
    )
    from qconvert.workflows.batch import run_batch
    from qconvert.workflows.conversion import convert
    from qconvert.workflows.pipeline import run_job
    from qconvert.workflows.search import search_quantize

__version__ = "0.1.0"

_EXPORTS = {  # public name: the module that defines it, imported on first use
    "CalibrationData": "qconvert.calibration",
    "open_data": "qconvert.calibration",
    "ActivationType": "qconvert.config",
    "BenchmarkConfig": "qconvert.config",
    "CalibrationMethod": "qconvert.config",
    "DataConfig": "qconvert.config",
    "EPConfig": "qconvert.config",
    "FloatConfig": "qconvert.config",
    "FloatType": "qconvert.config",
    "Gates": "qconvert.config",
    "Layout": "qconvert.config",
    "Mode": "qconvert.config",
    "PipelineJob": "qconvert.config",
    "QuantizeConfig": "qconvert.config",
    "SearchConfig": "qconvert.config",
    "Sensitive": "qconvert.config",
    "Target": "qconvert.config",
    "ValidateConfig": "qconvert.config",
    "WeightType": "qconvert.config",
    "ExitCode": "qconvert.errors",
    "QconvertError": "qconvert.errors",
    "analyze": "qconvert.measurement.analysis",
    "batch_feeds": "qconvert.measurement.benchmarking",
    "benchmark": "qconvert.measurement.benchmarking",
    "validate": "qconvert.measurement.validation",
    "LoadedModel": "qconvert.model.loading",
    "TensorSpec": "qconvert.model.loading",
    "input_specs": "qconvert.model.loading",
    "load_model": "qconvert.model.loading",
    "output_specs": "qconvert.model.loading",
    "PRESETS": "qconvert.presets",
    "expand": "qconvert.presets",
    "describe": "qconvert.quantization.description",
    "quantize": "qconvert.quantization.job",
    "AnalyzeResult": "qconvert.results",
    "BatchResult": "qconvert.results",
    "BenchmarkResult": "qconvert.results",
    "ConvertResult": "qconvert.results",
    "InspectResult": "qconvert.results",
    "PipelineResult": "qconvert.results",
    "QuantizeResult": "qconvert.results",
    "SearchResult": "qconvert.results",
    "ValidateResult": "qconvert.results",
    "run_batch": "qconvert.workflows.batch",
    "convert": "qconvert.workflows.conversion",
    "run_job": "qconvert.workflows.pipeline",
    "search_quantize": "qconvert.workflows.search",
}

__all__ = [
    "PRESETS",
    "ActivationType",
    "AnalyzeResult",
    "BatchResult",
    "BenchmarkConfig",
    "BenchmarkResult",
    "CalibrationData",
    "CalibrationMethod",
    "ConvertResult",
    "DataConfig",
    "EPConfig",
    "ExitCode",
    "FloatConfig",
    "FloatType",
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
    "convert",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qconvert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
