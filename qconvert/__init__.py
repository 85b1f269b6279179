"""qconvert: quantize FP32 ONNX models for CPUs and NPUs, and prove what it cost.

The library is the product; the `qconvert` command line is a thin layer over these functions.
"""

from __future__ import annotations

from qconvert.calibration import CalibrationData, open_data
from qconvert.config import ActivationType, CalibrationMethod, DataConfig, Layout, Mode, QuantizeConfig, WeightType
from qconvert.errors import ExitCode, QconvertError
from qconvert.model.description import describe
from qconvert.model.loading import LoadedModel, TensorSpec, input_specs, load_model, output_specs
from qconvert.quantization.job import quantize
from qconvert.results import BatchResult, InspectResult, PipelineResult, QuantizeResult
from qconvert.workflows.batch import run_batch
from qconvert.workflows.pipeline import PipelineJob, run_job

__version__ = "0.1.0"

__all__ = [
    "ActivationType",
    "BatchResult",
    "CalibrationData",
    "CalibrationMethod",
    "DataConfig",
    "ExitCode",
    "InspectResult",
    "Layout",
    "LoadedModel",
    "Mode",
    "PipelineJob",
    "PipelineResult",
    "QconvertError",
    "QuantizeConfig",
    "QuantizeResult",
    "TensorSpec",
    "WeightType",
    "describe",
    "input_specs",
    "load_model",
    "open_data",
    "output_specs",
    "quantize",
    "run_batch",
    "run_job",
]
