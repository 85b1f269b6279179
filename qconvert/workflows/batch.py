"""Several models through the pipeline, each in its own worker process.

A worker is a fresh interpreter (multiprocessing's spawn start method: no onnxruntime state is
inherited through a fork). One model's failure — an error, a crash in native code, the out-of-memory
killer — is recorded for that model and never stops the others or loses their results. The batch
passes when every model ran and met its gates.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from qconvert import progress
from qconvert.config import Executor, ExecutorConfig, PipelineJob
from qconvert.errors import ModelError, QconvertError, RuntimeFailure, UsageError, as_error
from qconvert.model.files import scratch_dir
from qconvert.providers import quiet_native_logs
from qconvert.results import BatchItem, BatchResult, PipelineResult, Status
from qconvert.workflows.processes import die_with_parent, unwind_on

log = logging.getLogger(__name__)

BATCH_SUFFIX = ".quant.onnx"  # a batch writes MODEL_STEM + this into its output folder


def expand_models(items: Sequence[str | Path]) -> tuple[list[Path], bool]:
    """The model files named by `items` — files, folders (their *.onnx, sorted) and globs — and
    whether they make a batch (more than one model, or any folder or glob)."""
    found: list[Path] = []
    batch = len(items) > 1
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir() and path.suffix.lower() != ".onnx":  # a folder named *.onnx is a mistaken model path
            batch = True
            matches = sorted(p for p in path.glob("*.onnx") if p.is_file())
            if not matches:
                raise ModelError(f"no .onnx file in the folder {path}", hint="point at a folder of ONNX models")
            found += matches
        elif glob.has_magic(text) and not path.exists():
            batch = True
            matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not matches:
                raise ModelError(f"no file matches {text}", hint="check the pattern; quote it so the shell leaves it")
            found += matches
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    return unique, batch or len(unique) > 1


def output_for(model: Path, output: Path, *, batch: bool) -> Path:
    """Where `model`'s quantized copy goes: `output` itself for one model; for a batch, `output`
    with {stem} replaced by the model's name when it has one, else a file in the folder `output`."""
    if "{stem}" in str(output):
        return Path(str(output).replace("{stem}", model.stem))
    if not batch:
        return output
    if output.suffix.lower() == ".onnx":
        raise UsageError(f"several models cannot all be written to {output}",
                         hint="give a folder (-o out/) or a name with {stem} (-o 'out/{stem}.int8.onnx')")
    return output / f"{model.stem}{BATCH_SUFFIX}"


def batch_jobs(template: PipelineJob, models: Sequence[Path], *, batch: bool) -> list[PipelineJob]:
    """One job per model from `template`, with distinct outputs none of which is an input."""
    jobs = [replace(template, model=m, output=output_for(m, template.output, batch=batch)) for m in models]
    outputs = [j.output.resolve() for j in jobs]
    inputs = {m.resolve() for m in models}
    for job, out in zip(jobs, outputs, strict=True):
        if outputs.count(out) > 1:
            raise UsageError(f"two models would be written to {job.output}",
                             hint="models with the same name from different folders need -o 'out/{stem}…' per "
                                  "folder, or separate runs")
        if batch and out in inputs:
            raise UsageError(f"the output {job.output} would replace one of the input models",
                             hint="write the batch to another folder")
    if batch:  # a batch makes its output folders
        for job in jobs:
            job.output.parent.mkdir(parents=True, exist_ok=True)
    return jobs


def run_batch(jobs: Sequence[PipelineJob], *, workers: int = 1,
              on_done: Callable[[BatchItem], None] | None = None,
              executor: ExecutorConfig | None = None) -> BatchResult:
    """Run every job, at most `workers` at a time, each in its own process (or, with a Dask
    `executor`, as a task on its cluster: `workflows.cluster`); items come back in the order of
    `jobs` whatever the order they finish in."""
    if workers < 1:
        raise UsageError(f"--jobs must be at least 1, got {workers}")
    if executor is not None and executor.kind is Executor.DASK:
        from qconvert.workflows.cluster import run_on_dask

        return run_on_dask(jobs, workers=workers, executor=executor, on_done=on_done)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    items: dict[int, BatchItem] = {}
    level = logging.getLogger("qconvert").getEffectiveLevel()
    with scratch_dir() as work, progress.task("models", total=len(jobs)) as model_done:
        pending = list(enumerate(jobs))
        running: dict[Any, tuple[Any, int, PipelineJob, float]] = {}  # sentinel -> (process, index, job, start)
        try:
            while pending or running:
                while pending and len(running) < workers:
                    index, job = pending.pop(0)
                    process = context.Process(target=_work, args=(job, work / f"{index}.json", level),
                                              name=f"qconvert-batch-{index}", daemon=True)
                    process.start()
                    running[process.sentinel] = (process, index, job, time.monotonic())
                for sentinel in wait(list(running)):
                    process, index, job, began = running.pop(sentinel)
                    process.join()
                    outcome = _read(work / f"{index}.json") or _death(job, process.exitcode)
                    items[index] = collect(job, outcome, time.monotonic() - began)
                    items[index].worker, items[index].waited = f"local process {process.pid}", began - started
                    model_done()
                    if on_done:
                        on_done(items[index])
        finally:
            for process, *_ in running.values():
                process.terminate()
            for process, *_ in running.values():
                process.join(5)
                if process.is_alive():
                    process.kill()
    return BatchResult([items[i] for i in sorted(items)], workers, time.monotonic() - started)


def _work(job: PipelineJob, result_file: Path, level: int) -> None:
    """A worker: run one job and write what came of it to `result_file` (the exit code says the rest)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the batch: the parent terminates its workers,
    unwind_on(signal.SIGTERM)  # which unwind so their temporary files are removed
    os.dup2(2, 1)  # stdout belongs to the parent's results
    logging.basicConfig(level=level, format=f"{job.model.name}: %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        quiet_native_logs()
    result_file.write_bytes(pickle.dumps(run_one(job)))


def run_one(job: PipelineJob) -> PipelineResult | QconvertError:
    """One model's job, its failure returned rather than raised: it is that model's alone."""
    from qconvert.workflows.pipeline import run_job

    try:
        return run_job(job)
    except Exception as exc:  # recorded for this model, the others go on
        log.debug("failed", exc_info=True)
        return as_error(exc, hint="this is a bug in qconvert; run this model alone with --debug")


def _read(result_file: Path) -> PipelineResult | QconvertError | None:
    with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
        outcome: PipelineResult | QconvertError = pickle.loads(result_file.read_bytes())  # our own worker's, above
        return outcome
    return None


def _death(job: PipelineJob, exitcode: int | None) -> RuntimeFailure:
    cause = f"signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"exit code {exitcode}"
    return RuntimeFailure(f"the worker for {job.model} died ({cause}): a crash in onnxruntime or onnx, or the "
                          "system's out-of-memory killer", hint="run this model alone with --debug to see where")


def collect(job: PipelineJob, outcome: PipelineResult | QconvertError, seconds: float) -> BatchItem:
    """A model's item from what its worker returned: its result, or the error it failed with."""
    item = BatchItem(str(job.model), str(job.output), Status.FAILED, seconds)
    if isinstance(outcome, QconvertError):
        item.error = outcome
    else:
        item.result = outcome
        item.status = Status.PASSED if outcome.passed else Status.MISSED
    return item
