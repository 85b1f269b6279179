"""benchmark(): interleaved timings, statistics, speedup ratios, gates and input batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, input_specs, load_model, open_data, quantize
from qconvert.config import BenchmarkConfig
from qconvert.errors import ModelError, UsageError
from qconvert.measurement.benchmarking import batch_feeds, benchmark


def _feeds(model: Path, batch: int = 1) -> dict[str, np.ndarray]:
    return batch_feeds(open_data(DataConfig("synthetic"), input_specs(load_model(model).proto)), batch)


def test_two_models_interleaved(mlp: Path, tmp_path: Path) -> None:
    quant = tmp_path / "q.onnx"
    quantize(mlp, quant)
    result = benchmark([mlp, quant], _feeds(mlp), config=BenchmarkConfig(runs=7, warmup=1))
    first, second = result.models
    assert first.runs == second.runs == 7
    assert first.speedup == 1.0 and second.speedup > 0
    for m in result.models:
        assert 0 < m.min_ms <= m.p50_ms <= m.p90_ms <= m.p99_ms
        assert m.throughput == pytest.approx(1000.0 / m.mean_ms)
        assert m.placement is None  # CPU: nothing to place
    assert second.speedup == pytest.approx(first.p50_ms / second.p50_ms)
    assert result.passed and result.gates == []


def test_duration_runs_until_each_model_has_its_time(mlp: Path) -> None:
    result = benchmark([mlp, mlp], _feeds(mlp), config=BenchmarkConfig(duration=0.02, warmup=0))
    assert len({m.runs for m in result.models}) == 1, "round-robin: every model runs as often"
    assert min(m.runs * m.mean_ms for m in result.models) >= 20.0 * (1 - 1e-9)


def test_impossible_speedup_gate_fails(mlp: Path) -> None:
    result = benchmark([mlp, mlp], _feeds(mlp), config=BenchmarkConfig(runs=3, warmup=0, min_speedup=1000.0))
    (gate,) = result.gates
    assert gate.name == "min_speedup" and not gate.passed and not result.passed


def test_models_with_different_inputs_are_refused(mlp: Path, cnn: Path) -> None:
    with pytest.raises(ModelError, match="different inputs"):
        benchmark([mlp, cnn], _feeds(mlp), config=BenchmarkConfig(runs=1))


@pytest.mark.parametrize("kwargs", [{"runs": 3, "duration": 1.0}, {"runs": 0}, {"duration": 0.0}, {"batch": 0}])
def test_bad_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        BenchmarkConfig(**kwargs)  # type: ignore[arg-type]


def test_batch_feeds_stack_and_cycle(mlp: Path, tmp_path: Path) -> None:
    data = tmp_path / "two.npz"
    np.savez(data, x=np.arange(32, dtype=np.float32).reshape(2, 16))
    stream = open_data(DataConfig(str(data)), input_specs(load_model(mlp).proto))
    feeds = batch_feeds(stream, 5)
    assert feeds["x"].shape == (5, 16)
    assert np.array_equal(feeds["x"][2], feeds["x"][0]) and not np.array_equal(feeds["x"][0], feeds["x"][1])


def test_synthetic_inputs_say_a_free_batch_dim_is_one(tmp_path: Path) -> None:
    from tests import models as built

    src = built.save(built.paddle_dynamic_dims(), tmp_path / "m.onnx")  # only the batch dim is dynamic (-1)
    result = benchmark([src], DataConfig("synthetic"), config=BenchmarkConfig(runs=2, warmup=0))
    assert result.inputs is not None and "the dynamic batch dim of 'x' is 1 (--shape for another)" in result.inputs
    assert result.to_dict()["inputs"] == result.inputs
