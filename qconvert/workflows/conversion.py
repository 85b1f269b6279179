"""`convert`: a model in 16-bit floats (`quantization.floats`), checked against FP32 on a few of
the calibration samples when there are some and onnxruntime's CPU provider runs the result."""

from __future__ import annotations

from pathlib import Path

from qconvert.calibration import CalibrationData
from qconvert.config import FloatConfig, FloatType
from qconvert.measurement.metrics import nan_lowest
from qconvert.model.loading import LoadedModel, load_model
from qconvert.quantization.floats import write_floats
from qconvert.results import ConvertResult
from qconvert.workflows.pipeline import quick_check

# float16 keeps ~11 bits: below this mean cosine to FP32 on the calibration samples, something overflowed.
CLOSE_COSINE = 0.999


def convert(model: str | Path | LoadedModel, output: str | Path, data: CalibrationData | None = None, *,
            config: FloatConfig | None = None, force: bool = False) -> ConvertResult:
    """Write `model` in float16 or bfloat16 into `output`, keeping in float32 the nodes that would
    break (see `qconvert.quantization.floats`); with `data`, float16 activations are range-checked
    and the result is compared with FP32 on a few samples."""
    config = config or FloatConfig()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    result = write_floats(loaded, output, data, config=config, force=force)
    if data is not None and config.to is FloatType.FP16:
        check = result.check = quick_check(loaded.path, Path(output), data)
        if not data.synthetic and not nan_lowest(check.worst_cosine) >= CLOSE_COSINE:
            result.warnings.append(
                f"the float16 model is far from FP32 on {check.samples} calibration samples: cosine "
                f"{check.worst_cosine:.5f} on output {check.output!r}; keep the nodes that overflow in float32 "
                f"(--keep-float NAME, or a lower --max-activation)")
    return result
