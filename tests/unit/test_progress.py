"""Progress reporting: the library's loops report tasks to an installed reporter, and to nobody by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from qconvert import DataConfig, PipelineJob, QuantizeConfig, input_specs, load_model, open_data, progress, quantize
from qconvert.calibration.npyfile import npz_length
from qconvert.config import BenchmarkConfig, CalibrationMethod, Gates, SearchConfig
from qconvert.measurement.analysis import analyze
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.validation import validate
from qconvert.quantization.adapter import reads_calibration_cache as _reads_calibration_cache
from qconvert.workflows.batch import run_batch
from qconvert.workflows.search import search_quantize
from tests import models


@dataclass
class Task:
    description: str
    total: int | None
    parent: str | None  # the task running when this one started
    done: int = 0
    finished: bool = False


@dataclass
class Recorder:
    """A `progress.Reporter` that keeps every task it was told about."""

    tasks: list[Task] = field(default_factory=list)
    running: list[Task] = field(default_factory=list)

    def start(self, description: str, total: int | None) -> object:
        task = Task(description, total, self.running[-1].description if self.running else None)
        self.tasks.append(task)
        self.running.append(task)
        return task

    def advance(self, handle: object, steps: int) -> None:
        assert isinstance(handle, Task) and not handle.finished
        handle.done += steps

    def finish(self, handle: object) -> None:
        assert handle is self.running.pop(), "tasks finish innermost first"
        assert isinstance(handle, Task)
        handle.finished = True

    def named(self, description: str) -> list[Task]:
        return [t for t in self.tasks if t.description == description]


def _data(model: Path, source: Path | str, samples: int | None = None, labels: str | None = None):  # type: ignore[no-untyped-def]
    return open_data(DataConfig(str(source), max_samples=samples, labels=labels), input_specs(load_model(model).proto))


def test_without_a_reporter_tasks_cost_nothing_and_report_nothing(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    with progress.task("anything", total=3) as step:
        step()
        step(2)
    result = quantize(mlp, tmp_path / "q.onnx", _data(mlp, mlp_calib))
    assert result.calibration_samples == 16


def test_the_reporter_is_installed_for_the_block_only() -> None:
    outer, inner = Recorder(), Recorder()
    with progress.reporting(outer):
        with progress.reporting(inner), progress.task("inner"):
            pass
        with progress.reporting(None), progress.task("silenced"):
            pass
        with progress.task("outer"):
            pass
    with progress.task("after"):
        pass
    assert [t.description for t in outer.tasks] == ["outer"] and [t.description for t in inner.tasks] == ["inner"]


def test_a_failing_task_still_finishes() -> None:
    recorder = Recorder()
    with progress.reporting(recorder), pytest.raises(ValueError), progress.task("outer", total=2) as step:
        step()
        with progress.task("inner"):
            raise ValueError
    assert [(t.description, t.done, t.finished) for t in recorder.tasks] == [("outer", 1, True), ("inner", 0, True)]
    assert recorder.running == []


def test_calibration_counts_its_samples(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    with progress.reporting(recorder):
        quantize(mlp, tmp_path / "a.onnx", _data(mlp, mlp_calib))
        quantize(mlp, tmp_path / "b.onnx", _data(mlp, mlp_calib, samples=5),
                 config=QuantizeConfig(method=CalibrationMethod.ENTROPY))
    histograms = [("calibration histograms", 5, 5, True)]  # the second pass knows the count from the first
    if not _reads_calibration_cache():  # onnxruntime 1.24 calibrates by itself, in one pass we only feed
        histograms = []
    assert [(t.description, t.total, t.done, t.finished) for t in recorder.tasks] == [
        ("calibration", 16, 16, True),
        ("calibration", 5, 5, True),
        *histograms,
    ]


def test_totals_are_known_only_when_the_source_tells_them_without_being_read(mlp: Path, mlp_calib: Path,
                                                                             tmp_path: Path) -> None:
    assert _data(mlp, mlp_calib).expected_samples() == 16
    assert _data(mlp, mlp_calib, samples=100).expected_samples() == 16  # a cap above the count
    assert _data(mlp, "synthetic", samples=3).expected_samples() == 3
    folder = tmp_path / "per-sample"
    folder.mkdir()
    for i in range(3):
        models.write_npz(models.mlp(), folder / f"{i}.npz", samples=1, seed=i)
    assert _data(mlp, folder).expected_samples() == 3
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "x.npy", np.zeros((4, 16), np.float32))
    assert _data(mlp, npy).expected_samples() is None  # unknown: the bar counts without a total
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert npz_length(tmp_path / "bad.npz") is None  # reading the data reports the problem, not the count


def test_validate_and_analyze_count_samples(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    quantized = tmp_path / "q.onnx"
    quantize(mlp, quantized, _data(mlp, mlp_calib))
    recorder = Recorder()
    with progress.reporting(recorder):
        checked = validate(mlp, quantized, _data(mlp, mlp_calib, samples=10))
        report = analyze(mlp, quantized, _data(mlp, mlp_calib, samples=4))
    assert [(t.description, t.total, t.done) for t in recorder.tasks] == [("validation", 10, 10), ("analysis", 4, 4)]
    assert checked.samples == 10 and report.samples == 4


def test_benchmark_counts_rounds(mlp: Path, cnn: Path, mlp_calib: Path) -> None:
    feeds = batch_feeds(_data(mlp, mlp_calib), 1)
    recorder = Recorder()
    with progress.reporting(recorder):
        timed = benchmark([mlp, mlp], feeds, config=BenchmarkConfig(runs=7, warmup=1))
        by_time = benchmark([mlp], feeds, config=BenchmarkConfig(duration=0.01, warmup=0))
    first, second = recorder.tasks
    assert (first.description, first.total, first.done) == ("benchmark", 7, 7)  # a round times every model once
    assert all(m.runs == 7 for m in timed.models)
    assert second.total is None and second.done == by_time.models[0].runs  # a duration: no count to reach


def test_the_search_counts_trials_with_their_steps_inside(outlier: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    loaded = load_model(model)
    search = SearchConfig(DataConfig(str(evaluation)), Gates(min_cosine=0.999), max_trials=6, benchmark_runs=3)
    recorder = Recorder()
    with progress.reporting(recorder):
        result = search_quantize(loaded, tmp_path / "q.onnx", _data(model, calib), config=QuantizeConfig(),
                                       search=search)
    (searched,) = recorder.named("accuracy search")
    assert (searched.total, searched.done, searched.parent) == (6, len(result.trials), None)
    assert result.met and len(result.trials) == 2  # met early: the task finishes short of its total
    inside = {t.description for t in recorder.tasks if t.parent == "accuracy search"}
    assert {"calibration", "validation", "analysis", "benchmark"} <= inside
    assert all(t.finished for t in recorder.tasks)


def test_a_batch_counts_models_in_the_parent_only(tmp_path: Path) -> None:
    broken = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for path in broken:  # fails at once in its worker: the test times the process round trip only
        path.write_bytes(b"not a model")
    recorder = Recorder()
    with progress.reporting(recorder):
        batch = run_batch([PipelineJob(model=m, output=m.with_suffix(".q.onnx")) for m in broken], workers=2)
    assert [(t.description, t.total, t.done) for t in recorder.tasks] == [("models", 2, 2)]
    assert batch.counts()["failed"] == 2
