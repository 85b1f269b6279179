"""Activation ranges from calibration data, with peak memory flat in the number of samples.

onnxruntime's histogram calibrators keep every intermediate output of every sample until the end
(100+ GB for BERT), and its `max_intermediate_outputs` discards ranges instead of merging them.
Here each sample is run, reduced into running statistics, and dropped:

- pass 1 keeps a running min, max and min |x| per tensor: MinMax ranges are these, exactly what
  one-shot calibration computes;
- pass 2 (entropy, percentile) bins every sample into fixed edges taken from pass 1 and adds the
  counts. Histograms with the same edges add exactly, so the thresholds equal those of one-shot
  calibration too (and do not depend on sample order); onnxruntime's own threshold search then
  runs on the summed histograms.

Memory is one sample's activations plus one histogram per tensor; time is one more forward pass
per sample for the histogram methods.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert import progress
from qconvert.calibration import CalibrationData
from qconvert.config import CalibrationMethod
from qconvert.errors import DataError, ModelError, QconvertError, first_line
from qconvert.providers import cpu_session, quiet_onnxruntime
from qconvert.quantization import adapter

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# onnxruntime's defaults (calibrate.create_calibrator), kept so thresholds match its calibrators.
NUM_BINS = {CalibrationMethod.ENTROPY: 128, CalibrationMethod.PERCENTILE: 2048}
NUM_QUANTIZED_BINS = 128

CANNOT_RUN = "onnxruntime cannot run the model to calibrate it"
CANNOT_RUN_HINT = "check that onnxruntime runs the FP32 model; try --no-preprocess"


@dataclass(frozen=True)
class Calibration:
    ranges: Any  # onnxruntime's TensorsData (qconvert.quantization.adapter builds it)
    samples: int
    seconds: float
    tensors: int
    infinite: tuple[str, ...] = ()  # tensors with ±Inf values, ranged over their finite values


@dataclass
class _Stats:
    low: np.ndarray
    high: np.ndarray
    abs_low: np.ndarray

    infinite: bool = False  # some values were ±Inf (a -inf attention mask): the range covers the finite ones

    # NaN is skipped like onnxruntime's calibrators do (np.fmin/fmax: no warning when all are NaN).
    def update(self, value: np.ndarray) -> None:
        if value.size:
            low, high, abs_low, infinite = _extremes(value)
            self.low, self.high = np.fmin(self.low, low), np.fmax(self.high, high)
            self.abs_low = np.fmin(self.abs_low, abs_low)
            self.infinite |= infinite

    @classmethod
    def first(cls, value: np.ndarray) -> _Stats:
        return cls(*_extremes(value))


def _extremes(value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Min, max, min |x| of the finite values (NaN skipped), and whether any was ±Inf."""
    low, high = np.fmin.reduce(value, axis=None), np.fmax.reduce(value, axis=None)
    if np.isfinite(low) and np.isfinite(high):
        return low, high, np.fmin.reduce(np.abs(value), axis=None), False
    finite = value[np.isfinite(value)]
    if not finite.size:
        nan = np.array(np.nan, value.dtype)
        return nan, nan, nan, bool(np.isinf(value).any())
    return finite.min(), finite.max(), np.abs(finite).min(), bool(np.isinf(value).any())


def tensors_to_calibrate(model: onnx.ModelProto, op_types: list[str]) -> list[str]:
    """Float inputs and outputs of nodes of `op_types` in the main graph (onnxruntime's selection:
    its QDQ quantizer reads ranges for exactly these)."""
    import onnx

    graph = model.graph
    infos = {v.name: v for v in (*graph.value_info, *graph.output, *graph.input)}
    constants = {t.name for t in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    chosen: dict[str, None] = {}
    for node in graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if (info is not None and info.type.HasField("tensor_type")
                    and info.type.tensor_type.elem_type in floats and name not in constants):
                chosen[name] = None
    return list(chosen)


def exposing_session(model: onnx.ModelProto, tensors: list[str], path: Path | None, *, external: bool, failure: str,
                     hint: str, threads: int = 0, weights: Path | None = None) -> onnxruntime.InferenceSession:
    """A CPU session on `model`, saved at `path` with `tensors` added to its outputs (graph
    optimizations off, so every tensor exists as named). `model` itself is left as it was.
    `weights`: the folder of the external data `model` refers to (its graph is then passed as bytes,
    and nothing is saved: `path` may be None). A load failure is a ModelError: "`failure`: <onnxruntime's first
    line>"."""
    import onnx

    if weights is not None:
        kept = len(model.graph.output)
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in tensors
                                  if n not in {o.name for o in model.graph.output[:kept]})
        try:
            graph = model.SerializeToString()
        finally:
            del model.graph.output[kept:]
        try:
            return cpu_session(graph, threads=threads, weights=weights)
        except Exception as exc:
            raise ModelError(f"{failure}: {first_line(exc)}", hint=hint) from exc

    if path is None:
        raise ValueError("exposing_session saves the model: give a path, or the weights' folder")
    kept = len(model.graph.output)
    outputs = {o.name for o in model.graph.output}
    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.input)}
    for name in tensors:
        if name not in outputs:
            outputs.add(name)
            model.graph.output.append(infos[name] if name in infos else onnx.ValueInfoProto(name=name))
    try:
        onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data")
    finally:
        del model.graph.output[kept:]
        if external:  # onnx.save moved the weights out of `model` into the file: read them back
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
    try:
        return cpu_session(path, threads=threads)
    except Exception as exc:
        raise ModelError(f"{failure}: {first_line(exc)}", hint=hint) from exc


def _outputs(session: onnxruntime.InferenceSession, data: CalibrationData,
             tensors: list[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(sample index, {tensor: value}) for every sample, one at a time."""
    index = -1
    try:
        for index, sample in enumerate(data):
            yield index, dict(zip(tensors, session.run(tensors, sample), strict=True))
    except QconvertError:
        raise
    except Exception as exc:
        raise DataError(f"calibration failed on sample {index}: {first_line(exc)}",
                        hint="check the calibration data against `qconvert inspect` of the model") from exc


def calibrate(model_path: Path, data: CalibrationData, op_types: list[str], work: Path, *,
              method: CalibrationMethod = CalibrationMethod.MINMAX, symmetric: bool = False,
              percentile: float = 99.999, external: bool = False) -> Calibration:
    """Ranges for the tensors onnxruntime's QDQ quantizer needs, streamed sample by sample."""
    started = time.perf_counter()
    model = _typed_graph(model_path, work)
    tensors = tensors_to_calibrate(model, op_types)
    if not tensors:
        raise ModelError(f"no float tensor of {', '.join(op_types) or 'any op type'} in the main graph to calibrate",
                         hint="check --op-types")
    session = exposing_session(model, tensors, work / "exposed.onnx", external=external, failure=CANNOT_RUN,
                               hint=CANNOT_RUN_HINT)
    stats, samples = _collect(session, data, tensors, "calibration")
    _check_finite(stats)

    if method is CalibrationMethod.MINMAX:
        pairs: dict[str, tuple[Any, Any]] = {}
        for name, s in stats.items():
            if symmetric:
                bound = np.maximum(np.abs(s.low), np.abs(s.high))
                pairs[name] = (-bound, bound)
            else:
                pairs[name] = (s.low, s.high)
        ranges = adapter.minmax_ranges(pairs)
    else:
        ranges = _histogram_ranges(session, data, tensors, stats, method, symmetric, percentile, samples)
    infinite = tuple(name for name, s in stats.items() if s.infinite)
    return Calibration(ranges, samples, time.perf_counter() - started, len(stats), infinite)


def _collect(session: onnxruntime.InferenceSession, data: CalibrationData, tensors: list[str],
             task: str) -> tuple[dict[str, _Stats], int]:
    """The extremes of every tensor over every sample, and the samples read (at least one)."""
    stats: dict[str, _Stats] = {}
    samples = 0
    with progress.task(task, total=data.expected_samples()) as step:
        for index, values in _outputs(session, data, tensors):
            for name, value in values.items():
                if name in stats:
                    stats[name].update(value)
                elif value.size:
                    stats[name] = _Stats.first(value)
            samples = index + 1
            step()
    if samples == 0:
        raise DataError(f"no calibration samples in {data.description}", hint="give non-empty data")
    return stats, samples


def tensor_peaks(model_path: Path, data: CalibrationData, work: Path, *,
                 external: bool) -> tuple[dict[str, float], int]:
    """The largest finite |x| of every float tensor the main graph's nodes read or write (initializers
    aside) over every sample, and the samples read. An external model's weights are never read into
    Python: onnxruntime reads them from the model's own folder."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    with contextlib.suppress(Exception):  # best effort, as onnxruntime's own loader does
        model = onnx.shape_inference.infer_shapes(model)
    tensors = tensors_to_calibrate(model, [])
    session = exposing_session(model, tensors, work / "exposed.onnx", external=False, failure=CANNOT_RUN,
                               hint=CANNOT_RUN_HINT, weights=model_path.parent if external else None)
    stats, samples = _collect(session, data, tensors, "activation ranges")
    return {name: float(np.fmax(np.abs(s.low), np.abs(s.high))) for name, s in stats.items()}, samples


def _typed_graph(model_path: Path, work: Path) -> onnx.ModelProto:
    """The model with ONNX shape inference's element types. When its sidecar is in `work` (where the
    exposing copy is saved), weights stay on disk: the copy refers to the same sidecar, and only
    onnxruntime's session holds them in memory."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    typed = work / "typed.onnx"
    try:  # from the file: the weights are not read, and models over 2 GB work
        onnx.shape_inference.infer_shapes_path(str(model_path), str(typed))
    except Exception:  # noqa: BLE001 - best effort, as onnxruntime's own loader does
        typed = model_path
    model = onnx.load(str(typed), load_external_data=False)
    if model_path.parent.resolve() != work.resolve():
        load_external_data_for_model(model, str(model_path.parent))
    return model


def _check_finite(stats: dict[str, _Stats]) -> None:
    """onnxruntime's quantizer only `assert`s finite ranges (under `python -O` it writes NaN scales)."""
    bad = [name for name, s in stats.items() if not (np.isfinite(s.low) and np.isfinite(s.high))]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"the model computes no finite value in {len(bad)} tensor(s) on the calibration data: {shown}",
                        hint="check the data; or keep the nodes that read them in float with --exclude-nodes")


def _histogram_ranges(session: onnxruntime.InferenceSession, data: CalibrationData, tensors: list[str],
                      stats: dict[str, _Stats], method: CalibrationMethod, symmetric: bool, percentile: float,
                      samples: int) -> Any:
    """Pass 2: histograms on the final edges, summed over the `samples` of pass 1, then onnxruntime's
    thresholds."""
    bins = NUM_BINS[method]
    # onnxruntime bins |x| over [min |x|, max |x|] for symmetric percentile, else x over [-t, t].
    absolute = method is CalibrationMethod.PERCENTILE and symmetric
    edges: dict[str, tuple[Any, Any]] = {}
    for name, s in stats.items():
        if absolute:
            edges[name] = (s.abs_low, np.maximum(np.abs(s.low), np.abs(s.high)))
        else:
            threshold = np.array(max(abs(s.low), abs(s.high)), dtype=s.high.dtype)
            edges[name] = (-threshold, threshold)
    for name, (low, high) in edges.items():
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(np.float32(high) - np.float32(low))
        if overflows:  # a ±3.4e38 mask fill: bin in float64, where the span fits
            edges[name] = (float(low), float(high))
    hists: dict[str, np.ndarray] = {}
    hist_edges: dict[str, np.ndarray] = {}
    with progress.task("calibration histograms", total=samples) as step:
        for _, values in _outputs(session, data, tensors):
            for name, value in values.items():
                if name not in edges:
                    continue
                flat = np.abs(value.ravel()) if absolute else value.ravel()
                counts, found = np.histogram(flat, bins, range=edges[name])
                if name in hists:
                    hists[name] += counts
                else:
                    hists[name], hist_edges[name] = counts, found
            step()
    histograms: dict[str, tuple[Any, ...]] = {}
    for name, counts in hists.items():
        s = stats[name]
        if absolute:
            histograms[name] = (counts, hist_edges[name].astype(s.high.dtype), s.low, s.high)
        else:
            histograms[name] = (counts, hist_edges[name], s.low, s.high, edges[name][1])
    with quiet_onnxruntime():  # the collector prints its progress on stdout
        return adapter.histogram_ranges(histograms, method, symmetric=symmetric, num_bins=bins,
                                        num_quantized_bins=NUM_QUANTIZED_BINS, percentile=percentile)


def channel_absmax(model: onnx.ModelProto, tensors: list[str], data: CalibrationData,
                   work: Path) -> dict[str, np.ndarray]:
    """Max |x| per channel (last axis) of each tensor over every sample, streamed."""
    session = exposing_session(model, tensors, work / "exposed.onnx", external=True, failure=CANNOT_RUN,
                               hint=CANNOT_RUN_HINT)
    found: dict[str, np.ndarray] = {}
    with progress.task("smoothing ranges", total=data.expected_samples()) as step:
        for _, values in _outputs(session, data, tensors):
            for name, value in values.items():
                if value.size:
                    peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                    found[name] = np.maximum(found[name], peak) if name in found else peak
            step()
    return found
