"""Latency of one or more models, measured interleaved so a comparison holds on a noisy machine.

Every model gets its own session and the same inputs. After a warm-up, runs go round-robin
(A B A B …) until each model has `runs` timings or `duration` seconds of them; a burst of load
on the machine then hits every model alike. On a provider other than the CPU, onnxruntime's record
of each session's partitioning tells how much of the model the provider really took.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert import progress
from qconvert.calibration import data_for
from qconvert.config import CPU, DEFAULT_RUNS, BenchmarkConfig, DataConfig
from qconvert.errors import DataError, ModelError, UsageError, first_line
from qconvert.measurement.decoding import decode_speed
from qconvert.model.graph import holds_type
from qconvert.model.loading import check_model_file
from qconvert.providers import cpu_casts, create_session, placement, quiet_onnxruntime, resolve, signature
from qconvert.results import BenchmarkResult, Gate, Latency, Placement, provider_gates

if TYPE_CHECKING:
    from qconvert.calibration import CalibrationData

def batch_feeds(data: CalibrationData, batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples stacked along axis 0 (cycling when there are fewer)."""
    samples = []
    for sample in data:
        samples.append(sample)
        if len(samples) == batch:
            break
    if not samples:
        raise DataError(f"no samples in {data.description}", hint="point --data at non-empty data")
    while len(samples) < batch:
        samples.extend(samples[: batch - len(samples)])
    if batch == 1:
        return samples[0]
    try:
        return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}
    except ValueError as exc:
        raise DataError(f"cannot stack samples into a batch of {batch}: {exc}",
                        hint="samples must share their shapes after axis 0") from exc


def _time_runs(sessions: list[Any], feeds: dict[str, np.ndarray], config: BenchmarkConfig) -> list[list[float]]:
    for session in sessions:
        for _ in range(config.warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    runs = config.runs or DEFAULT_RUNS  # unused when a duration is set
    spent = [0.0] * len(sessions)
    with progress.task("benchmark", total=runs if config.duration is None else None) as step:  # a step: each model once
        while True:
            for i, session in enumerate(sessions):
                start = time.perf_counter()
                session.run(None, feeds)
                elapsed = time.perf_counter() - start
                times[i].append(elapsed)
                spent[i] += elapsed
            step()
            if config.duration is not None:
                if min(spent) >= config.duration:
                    return times
            elif len(times[0]) >= runs:
                return times


def _latency(path: Path, seconds: list[float], batch: int, first_median_ms: float | None,
             where: Placement | None) -> Latency:
    ms = np.asarray(seconds) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return Latency(path=str(path), runs=len(seconds), mean_ms=mean, p50_ms=p50, p90_ms=p90, p99_ms=p99,
                   min_ms=float(ms.min()), throughput=batch * 1000.0 / mean,
                   speedup=(first_median_ms / p50) if first_median_ms else 1.0, placement=where,
                   samples_ms=ms.tolist())


def _check_inputs(sessions: list[Any], paths: list[Path]) -> None:
    first = signature(sessions[0].get_inputs())
    for session, path in zip(sessions[1:], paths[1:], strict=True):
        other = signature(session.get_inputs())
        if other != first:
            raise ModelError(f"{path} takes different inputs from {paths[0]}: {other} vs {first}",
                             hint="benchmark models that take the same inputs, or run them separately")


def benchmark(models: list[str | Path], feeds: dict[str, np.ndarray] | DataConfig, *,
              config: BenchmarkConfig | None = None) -> BenchmarkResult:
    """Latency of each model on `feeds` (one batch, or the data whose first `config.batch` samples
    make it), interleaved, with the speedup of each over the first; on a non-CPU provider also where
    each model's nodes really ran."""
    config = config or BenchmarkConfig()
    if not models:
        raise UsageError("no model to benchmark")
    paths = [Path(m) for m in models]
    if config.decode is not None:
        return benchmark_decoding(paths, config)
    inputs = None
    if isinstance(feeds, DataConfig):
        data = data_for(feeds, paths[0])
        feeds, inputs = batch_feeds(data, config.batch), data.description
    for path in paths:
        check_model_file(path)
    provider = resolve(config.ep.provider)
    with quiet_onnxruntime():
        sessions = [create_session(p, config.ep) for p in paths]
        placements = [placement(s, provider) for s in sessions]
        _check_inputs(sessions, paths)
        try:
            times = _time_runs(sessions, feeds, config)
        except Exception as exc:
            raise DataError(f"a model failed to run on the benchmark inputs: {first_line(exc)}",
                            hint="check --shape / --batch / --data against `qconvert inspect`") from exc
    first_median = float(np.median(times[0])) * 1000.0  # ms, like Latency
    latencies = [_latency(p, t, config.batch, first_median if i else None, where)
                 for i, (p, t, where) in enumerate(zip(paths, times, placements, strict=True))]
    return BenchmarkResult(models=latencies, config=config, provider=provider.name,
                           gates=_gates(config, latencies), inputs=inputs,
                           warnings=[w for p in paths if (w := _cast_warning(p, provider.name))])


def _cast_warning(path: Path, provider: str) -> str | None:
    """On the CPU provider, what a float16 model's timing means: most of its ops have no float16
    kernel there and run in float32 between casts onnxruntime inserts."""
    import onnx

    if provider != CPU:
        return None
    graph = onnx.load(str(path), load_external_data=False)
    if not holds_type(graph, onnx.TensorProto.FLOAT16):
        return None  # no float16 weight or input or output: not a float16 model
    try:
        typed = onnx.shape_inference.infer_shapes(graph)
    except Exception:  # noqa: BLE001 - only a remark: a model inference cannot type gets none
        return None
    found = cpu_casts(typed)
    if not found or not found[1]:
        return None
    nodes, casted = found
    return (f"{path.name}: {casted} of its {nodes} float16 nodes have no float16 kernel in onnxruntime's CPU provider "
            "and run in float32 between inserted casts: expect it no faster than FP32 here; float16 is for GPUs and "
            "NPUs (--ep)")


def benchmark_decoding(paths: list[Path], config: BenchmarkConfig) -> BenchmarkResult:
    """`benchmark` of language models: prefill latency and decode tokens/s, interleaved, the
    --min-speedup gate on decode speed."""
    assert config.decode is not None
    for path in paths:
        check_model_file(path)
    decode = config.decode
    timings = decode_speed(paths, prompt_tokens=decode.prompt_tokens, new_tokens=decode.new_tokens,
                           rounds=decode.rounds, ep=config.ep)
    found = []
    if config.min_speedup is not None and len(timings) > 1:
        slowest = min(timings[1:], key=lambda t: t.decode_speedup)
        found.append(Gate("min_decode_speedup", config.min_speedup, slowest.decode_speedup,
                          slowest.decode_speedup >= config.min_speedup, slowest.path))
    return BenchmarkResult(models=[], config=config, provider=resolve(config.ep.provider).name, gates=found,
                           inputs=f"{decode.prompt_tokens}-token prompt, {decode.new_tokens} new tokens",
                           decoding=timings)


def _gates(config: BenchmarkConfig, latencies: list[Latency]) -> list[Gate]:
    found = []
    if config.min_speedup is not None and len(latencies) > 1:
        slowest = min(latencies[1:], key=lambda lat: lat.speedup)
        found.append(Gate("min_speedup", config.min_speedup, slowest.speedup,
                          slowest.speedup >= config.min_speedup, slowest.path))
    for latency in latencies[1:] if config.reference_first else latencies:
        found += provider_gates(latency.placement, latency.path, config.min_provider_share)
    return found
