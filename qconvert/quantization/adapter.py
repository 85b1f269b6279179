"""The one module that speaks to onnxruntime.quantization (ruff's banned-api keeps it so).

Its arguments — `extra_options` with about twenty CamelCase keys whose typos are silently ignored,
QuantType, calibration methods and ranges, pre-processing — are built here and only here, from
qconvert's typed configuration.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconvert import progress
from qconvert.config import ActivationType, CalibrationMethod, Mode, QuantizeConfig, Target, WeightType
from qconvert.errors import DataError, ModelError, QconvertError, first_line

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import QuantType

    from qconvert.calibration import CalibrationData
    from qconvert.quantization.planning import Plan


class QuantizerFailure(ModelError):
    """onnxruntime's quantizer raised; `nodes` are the nodes it was working on, innermost first."""

    def __init__(self, message: str, *, hint: str | None = None, details: tuple[str, ...] = (),
                 nodes: tuple[str, ...] = (), cause: str = "") -> None:
        super().__init__(message, hint=hint, details=details)
        self.nodes, self.cause = nodes, cause

    @classmethod
    def of(cls, exc: Exception) -> QuantizerFailure:
        return cls(f"onnxruntime could not quantize the model: {first_line(exc)}",
                   hint="try --no-preprocess, or exclude the failing node with --exclude-nodes",
                   nodes=_nodes_at_fault(exc), cause=first_line(exc))


def _nodes_at_fault(exc: BaseException) -> tuple[str, ...]:
    """The names of the nodes the quantizer's frames held when it raised, innermost frame first: its
    loops keep the node (or a record with its `node_name`) they are working on in a local."""
    import onnx

    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    found: dict[str, None] = {}
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = value.name if isinstance(value, onnx.NodeProto) else getattr(value, "node_name", None)
            if isinstance(name, str) and name:
                found[name] = None
    return tuple(found)


def candidate_op_types(mode: Mode) -> frozenset[str]:
    """Op types onnxruntime quantizes by default in `mode`."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if mode is Mode.DYNAMIC:
        return frozenset(IntegerOpsRegistry)
    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def _quant_type(value: ActivationType | WeightType) -> QuantType:
    from onnxruntime.quantization import QuantType

    return {
        "int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16,
        "uint16": QuantType.QUInt16, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4,
    }[value.value]


class CalibrationReader:
    """Adapts a `CalibrationData` stream to onnxruntime's `CalibrationDataReader` protocol."""

    def __init__(self, data: CalibrationData, step: progress.Step | None = None) -> None:
        self._it = iter(data)
        self._step = step
        self.count = 0

    def get_next(self) -> dict[str, Any] | None:
        sample = next(self._it, None)
        if sample is not None:
            self.count += 1
            if self._step:
                self._step()
        return sample

    def __iter__(self) -> CalibrationReader:
        return self

    def __next__(self) -> dict[str, Any]:
        sample = self.get_next()
        if sample is None:
            raise StopIteration
        return sample


def _extra_options(config: QuantizeConfig, mode: Mode, subgraphs: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ActivationSymmetric": config.symmetric_activations,
        "WeightSymmetric": config.symmetric_weights,
        "EnableSubgraph": subgraphs,
    }
    if mode is Mode.DYNAMIC:
        options["MatMulConstBOnly"] = True
    return options


def reads_calibration_cache() -> bool:
    """Whether quantize_static takes saved ranges (1.32 does, 1.24 does not), so calibration can be ours."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _target_options(src: Path, plan_: Plan, config: QuantizeConfig,
                    wide: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Op types and extra options for the target: onnxruntime's defaults, or its QNN helper's
    per-op overrides (with `wide` activations raised to 16 bits and the type converts they need)."""
    from onnxruntime.quantization import QuantType

    options = _extra_options(config, Mode.STATIC, subgraphs=False)
    if config.target is not Target.QNN:
        return plan_.op_types, options
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    unsigned = config.activations in (ActivationType.UINT8, ActivationType.UINT16)
    wide_type = QuantType.QUInt16 if unsigned else QuantType.QInt16
    qnn = get_qnn_qdq_config(
        str(src), None, activation_type=_quant_type(config.activations), weight_type=_quant_type(config.weights),
        per_channel=config.per_channel, activation_symmetric=config.symmetric_activations,
        weight_symmetric=config.symmetric_weights, op_types_to_quantize=plan_.op_types or None,
        nodes_to_exclude=plan_.nodes_to_exclude, init_overrides={t: [{"quant_type": wide_type}] for t in wide})
    return list(qnn.op_types_to_quantize), {**options, **qnn.extra_options}


def quantize_static(src: Path, dest: Path, calibration: Path | CalibrationReader, plan_: Plan,
                    config: QuantizeConfig, external: bool, wide: list[str]) -> None:
    """QDQ-quantize the main graph from the ranges saved at `calibration` (`save_ranges`), or by
    letting onnxruntime calibrate on that reader."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    op_types, options = _target_options(src, plan_, config, wide)
    try:
        ort_quantize_static(
            str(src), str(dest), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types, per_channel=config.per_channel,
            reduce_range=config.reduce_range, activation_type=_quant_type(config.activations),
            weight_type=_quant_type(config.weights), nodes_to_exclude=plan_.nodes_to_exclude,
            use_external_data_format=external, calibrate_method=_ort_method(config.method),
            extra_options=options,
            **({"calibration_data_reader": calibration} if isinstance(calibration, CalibrationReader)
               else {"calibration_data_reader": None, "calibration_cache_path": str(calibration)}),
        )
    except QconvertError:  # the data reader's own errors
        raise
    except Exception as exc:
        if isinstance(calibration, CalibrationReader) and calibration.count == 0:
            raise DataError("no calibration samples", hint="give non-empty data") from exc
        raise QuantizerFailure.of(exc) from exc


def _ort_method(method: CalibrationMethod) -> Any:
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod

    return {
        CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile, CalibrationMethod.DISTRIBUTION: OrtMethod.Distribution,
    }[method]


def quantize_dynamic(src: Path, staged: Path, plan_: Plan, config: QuantizeConfig, external: bool,
                 exclude: list[str], only: list[str] | None = None) -> None:
    """Integer-op quantization of the nodes not in `exclude` (or of the nodes in `only`)."""
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    dynamic_ops = sorted(set(plan_.op_types) & candidate_op_types(Mode.DYNAMIC)) or plan_.op_types
    weight = config.weights if config.weights in (WeightType.INT8, WeightType.UINT8) else WeightType.INT8
    try:
        ort_quantize_dynamic(
            str(src), str(staged), op_types_to_quantize=dynamic_ops, per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=_quant_type(weight), nodes_to_exclude=exclude,
            nodes_to_quantize=only,
            use_external_data_format=external,
            extra_options=_extra_options(config, Mode.DYNAMIC, subgraphs=plan_.subgraphs),
        )
    except Exception as exc:
        raise QuantizerFailure.of(exc) from exc


def minmax_ranges(extremes: Mapping[str, tuple[Any, Any]]) -> Any:
    """onnxruntime's ranges (`TensorsData`) from each tensor's (lowest, highest)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    return TensorsData(OrtMethod.MinMax, {name: TensorData(lowest=low, highest=high)
                                         for name, (low, high) in extremes.items()})


def histogram_ranges(histograms: Mapping[str, tuple[Any, ...]], method: CalibrationMethod, *, symmetric: bool,
                     num_bins: int, num_quantized_bins: int, percentile: float) -> Any:
    """onnxruntime's thresholds (entropy or percentile) on histograms qconvert summed itself, in the
    layout of its `HistogramCollector.histogram_dict`."""
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData

    collector = HistogramCollector(method=method.value, symmetric=symmetric, num_bins=num_bins,
                                   num_quantized_bins=num_quantized_bins, percentile=percentile, scenario="same")
    collector.histogram_dict.update(histograms)
    ort_method = OrtMethod.Entropy if method is CalibrationMethod.ENTROPY else OrtMethod.Percentile
    return TensorsData(ort_method, collector.compute_collection_result())


def save_ranges(ranges: Any, path: Path) -> None:
    """Write ranges where `quantize_static(calibration=path)` reads them."""
    from onnxruntime.quantization import save_tensors_data

    save_tensors_data(ranges, path)


def pre_process(model: onnx.ModelProto | Path, dest: Path, *, optimize: bool, symbolic: bool, sidecar: str) -> None:
    """onnxruntime's own pre-processing (ONNX shape inference, its symbolic shape inference when
    `symbolic`, and basic graph optimisation when `optimize`), written to `dest` with every weight in
    `sidecar` beside it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(model, dest, auto_merge=True, skip_optimization=not optimize, skip_symbolic_shape=not symbolic,
                      save_as_external_data=True, all_tensors_to_one_file=True, external_data_location=sidecar)


def load_with_shapes(path: Path) -> onnx.ModelProto:
    """A model with its weights and inferred value types, loaded the way onnxruntime's quantizer loads it."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    model: onnx.ModelProto = load_model_with_shape_infer(path)
    return model
