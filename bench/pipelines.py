"""What batches, progress bars and reports cost, measured side by side in one run.

1. Batch workers: the same batch of 8 models (the two sample models, each `--copies` times, with
   calibration, validation and a benchmark) run with `--jobs 1` and `--jobs 2`, and with `--jobs 2`
   on the Dask executor (a local cluster of 2 workers on 127.0.0.1 started for each run, and one
   already running, as a real cluster is), rounds interleaved; prints median wall times, the gain
   of a second worker, the Dask executor's overhead per model as a ratio to the local executor,
   and the start-up a worker process adds: a one-model batch against the same job run in-process.
   Needs the cluster extra (distributed).
2. Progress bars beside a benchmark: the quantized sample CNN timed with the Rich bars drawing
   (to a terminal console writing to /dev/null) and without, interleaved; prints the ratio of
   median latencies (goal: within noise, ~1.00).
3. The HTML report: its size and the time to render it from a pipeline report.
Usage: python bench/pipelines.py [--rounds N] [--copies N]   (.venv has distributed: make setup)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
sys.path.insert(0, str(REPO))

from qconvert import DataConfig, PipelineJob, run_batch, run_job  # noqa: E402
from qconvert.config import (  # noqa: E402
    BenchmarkConfig,
    Executor,
    ExecutorConfig,
    Gates,
)


def _job(model: Path, out: Path) -> PipelineJob:
    return PipelineJob(model, out, calibration=DataConfig(str(SAMPLES / "digits.calib.npz"), max_samples=64),
                       evaluation=DataConfig(str(SAMPLES / "digits.eval.npz"), labels="labels", max_samples=64),
                       gates=Gates(max_drop=1.0), benchmark=BenchmarkConfig(runs=50), force=True)


def batches(work: Path, rounds: int, copies: int) -> None:
    models = work / "models"
    models.mkdir()
    for name in ("digits_cnn", "digits_transformer"):
        for i in range(copies):
            shutil.copy(SAMPLES / f"{name}.onnx", models / f"{name}_{i}.onnx")
    paths = sorted(models.glob("*.onnx"))
    jobs = [_job(p, work / "out" / f"{p.stem}.q.onnx") for p in paths]
    (work / "out").mkdir()
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", resources={"qconvert": 1}, silence_logs=50)
    running = ExecutorConfig(kind=Executor.DASK, scheduler=cluster.scheduler_address)
    per_run = ExecutorConfig(kind=Executor.DASK)
    executors = (("jobs 1", 1, None), ("jobs 2", 2, None), ("dask, cluster per run", 2, per_run),
                 ("dask, running cluster", 2, running))
    times: dict[str, list[float]] = {label: [] for label, *_ in executors}
    times |= {"one model in-process": [], "one model batch": []}
    for _ in range(rounds):
        for label, workers, executor in executors:
            start = time.perf_counter()
            result = run_batch(jobs, workers=workers, executor=executor)
            times[label].append(time.perf_counter() - start)
            assert result.passed, result.to_dict()
        start = time.perf_counter()
        run_job(jobs[0])
        times["one model in-process"].append(time.perf_counter() - start)
        start = time.perf_counter()
        run_batch(jobs[:1])
        times["one model batch"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"batch of {len(jobs)} models (quantize + validate + benchmark each), median of {rounds} rounds:")
    cluster.close()
    print(f"  --jobs 1: {med['jobs 1']:.2f} s   --jobs 2: {med['jobs 2']:.2f} s   "
          f"gain of a second worker: {med['jobs 1'] / med['jobs 2']:.2f}x")
    for label in ("dask, cluster per run", "dask, running cluster"):
        extra = (med[label] - med["jobs 2"]) / len(jobs)
        print(f"  --executor dask --jobs 2 ({label}): {med[label]:.2f} s, {med[label] / med['jobs 2']:.2f}x the local "
              f"executor; {extra:+.2f} s per model")
    print(f"  one model: in-process {med['one model in-process']:.2f} s, in a worker {med['one model batch']:.2f} s "
          f"(+{med['one model batch'] - med['one model in-process']:.2f} s for the worker process)")


def bars(work: Path, rounds: int) -> None:
    import os

    from rich.console import Console

    from qconvert import progress
    from qconvert.calibration import open_data
    from qconvert.cli import render
    from qconvert.measurement.benchmarking import batch_feeds, benchmark
    from qconvert.model.loading import input_specs, load_model

    quant = work / "cnn.q.onnx"
    run_job(replace(_job(SAMPLES / "digits_cnn.onnx", quant), evaluation=None, benchmark=None, gates=Gates()))

    feeds = batch_feeds(open_data(DataConfig("synthetic"), input_specs(load_model(quant).proto)), 1)
    sink = open(os.devnull, "w")  # noqa: SIM115 - held for the whole run
    render.err = Console(file=sink, force_terminal=True, width=100)
    medians: dict[str, list[float]] = {"without bars": [], "with bars": []}
    for _ in range(rounds):
        for label, found in medians.items():
            reporter = render._Bars() if label == "with bars" else None
            with progress.reporting(reporter):
                result = benchmark([quant], feeds, config=BenchmarkConfig(runs=400))
            found.append(result.models[0].p50_ms)
    a, b = (statistics.median(v) for v in medians.values())
    print(f"quantized CNN p50 over {rounds} rounds of 400 runs: without bars {a:.4f} ms, with bars {b:.4f} ms, "
          f"ratio {b / a:.3f}")


def report(work: Path) -> None:
    from qconvert.report.html import render_html

    result = run_job(replace(_job(SAMPLES / "digits_cnn.onnx", work / "r.q.onnx"), analyze=True))
    payload = result.report()
    start = time.perf_counter()
    page = render_html(payload)
    seconds = time.perf_counter() - start
    print(f"HTML report of a pipeline (validate + 50-run benchmark + analyze): {len(page) / 1024:.0f} KB, "
          f"rendered in {seconds * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="copies of each sample model in the batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qconvert-pipelines-") as tmp:
        work = Path(tmp)
        (work / "b").mkdir()
        batches(work / "b", args.rounds, args.copies)
        bars(work, args.rounds)
        report(work)


if __name__ == "__main__":
    main()
