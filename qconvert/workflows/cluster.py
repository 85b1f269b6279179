"""Batches on a Dask cluster (`--executor dask`): each model's job is one task on Dask's
`distributed` scheduler, which runs the same code on one machine, over SSH, on Kubernetes or
SLURM/PBS (dask-jobqueue).

- Where: `--scheduler ADDR`, else DASK_SCHEDULER_ADDRESS, else a local cluster on 127.0.0.1 started
  for the run (one single-threaded worker per --jobs) and closed after it.
- At most --jobs tasks are submitted at once. Each asks for one unit of the worker resource
  `qconvert`: workers started with `--resources qconvert=1` never run two jobs at once. Memory is the
  worker's own limit (its nanny restarts a worker that passes it).
- Faults: a task whose worker dies is run again elsewhere (Dask's resilience; a local cluster allows
  `retries` deaths); after that the model is recorded as failed, and the others go on. A job's own
  failure is its result, never an exception of the task. Ctrl-C cancels the outstanding tasks; a
  local cluster is closed and the temporaries its workers left beside the outputs are removed.
- Files: when every worker sees the first job's inputs at their paths (a shared file system; asked
  once), workers read inputs and write outputs in place. Otherwise a job's inputs — when they total
  at most the send limit — travel with its task, and a worker that does not see them runs the job
  in a folder of its own and sends the output back to the client, which writes it all or nothing
  like a local run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qconvert import progress
from qconvert.config import DataConfig, ExecutorConfig, PipelineJob, TextData
from qconvert.errors import EnvironmentFailure, QconvertError, RuntimeFailure, first_line
from qconvert.model.files import check_output_path, model_files, move_into_place, staging_dir, sweep_stale
from qconvert.results import BatchItem, BatchResult, PipelineResult
from qconvert.workflows.batch import collect, run_one

log = logging.getLogger(__name__)

RESOURCE = "qconvert"  # the worker resource a job takes one of


@dataclass(frozen=True)
class Payload:
    """What a task receives: the job, its input files (path -> bytes) when they travel with it, and
    the client's log level."""

    job: PipelineJob
    files: dict[str, bytes] | None
    level: int


@dataclass(frozen=True)
class TaskOutcome:
    """What a task returns: the job's outcome (pickled), where and when it started, and the output's
    files (name -> bytes) when the worker ran it in a folder of its own."""

    outcome: bytes
    worker: str
    started: float  # time.time() on the worker
    outputs: dict[str, bytes] | None = None


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise EnvironmentFailure("--executor dask needs Dask's distributed package",
                                 hint="pip install 'qconvert[cluster]'") from exc
    return distributed


@contextlib.contextmanager
def _local_cluster(distributed: Any, workers: int, retries: int) -> Iterator[Any]:
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address="127.0.0.1:0", resources={RESOURCE: 1},
                                           silence_logs=logging.ERROR)
    try:
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def _quiet_dask(level: int) -> Iterator[None]:
    """Dask's own INFO chatter (workers joining, closing) stays off stderr unless --debug."""
    loggers = [logging.getLogger(name) for name in ("distributed", "dask")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.ERROR)
    try:
        yield
    finally:
        for lg, was in zip(loggers, before, strict=True):
            lg.setLevel(was)


@contextlib.contextmanager
def _client(distributed: Any, address: str, seconds: float) -> Iterator[Any]:
    try:
        client = distributed.Client(address, timeout=seconds, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise EnvironmentFailure(f"cannot reach the Dask scheduler at {address}: {first_line(exc)}",
                                 hint="start one (dask scheduler --host 127.0.0.1) or check --scheduler and "
                                      "DASK_SCHEDULER_ADDRESS") from exc
    try:
        yield client
    finally:
        client.close()


def _resources(client: Any, warnings: list[str]) -> dict[str, int] | None:
    workers = client.scheduler_info().get("workers", {})
    if workers and all(RESOURCE in (w.get("resources") or {}) for w in workers.values()):
        return {RESOURCE: 1}
    warnings.append(f"the cluster's workers declare no '{RESOURCE}' resource: two jobs may share a worker's "
                    f"memory (start them with --resources {RESOURCE}=1)")
    return None


def run_on_dask(jobs: Sequence[PipelineJob], *, workers: int, executor: ExecutorConfig,
                on_done: Callable[[BatchItem], None] | None = None) -> BatchResult:
    """`run_batch` on a Dask cluster: the same items, in the order of `jobs`, plus where each ran."""
    distributed = _distributed()
    address = executor.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    started, wall = time.monotonic(), time.time()
    warnings: list[str] = []
    items: dict[int, BatchItem] = {}
    level = logging.getLogger("qconvert").getEffectiveLevel()
    local = address is None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_quiet_dask(level))
            if local:
                cluster = stack.enter_context(_local_cluster(distributed, workers, executor.retries))
                address = cluster.scheduler_address
            assert address is not None
            client = stack.enter_context(_client(distributed, address, executor.connect_seconds))
            resources = _resources(client, warnings)
            items = _run(distributed, client, jobs, workers, executor, resources, level, wall, warnings, on_done)
    finally:
        if local and len(items) < len(jobs):  # interrupted: the closed cluster's workers left their temporaries
            for job in jobs:
                sweep_stale(job.output.parent, job.output.name)
            sweep_stale(Path(tempfile.gettempdir()), "qconvert")
    where = "dask (a local cluster on 127.0.0.1)" if local else f"dask {address}"
    return BatchResult([items[i] for i in sorted(items)], workers, time.monotonic() - started, executor=where,
                       warnings=warnings)


def _run(distributed: Any, client: Any, jobs: Sequence[PipelineJob], workers: int, executor: ExecutorConfig,
         resources: dict[str, int] | None, level: int, wall: float, warnings: list[str],
         on_done: Callable[[BatchItem], None] | None) -> dict[int, BatchItem]:
    items: dict[int, BatchItem] = {}
    pending = list(enumerate(jobs))
    running: dict[str, tuple[Any, int, PipelineJob, float]] = {}  # key -> (future, index, job, submitted)
    finished = distributed.as_completed(loop=client.loop)
    token = secrets.token_hex(4)
    shared = bool(jobs) and _shared(client, jobs[0])
    try:
        with progress.task("models", total=len(jobs)) as model_done:
            while pending or running:
                while pending and len(running) < workers:
                    index, job = pending.pop(0)
                    try:  # here, once: a task run again after its worker died may find its own output
                        check_output_path(job.output, inputs=(job.model,), force=job.force)
                    except QconvertError as exc:
                        items[index] = collect(job, exc, 0.0)
                        model_done()
                        continue
                    files = None if shared else _bundle(job, executor.send_limit, warnings)
                    payload = Payload(replace(job, force=True), files, level)
                    future = client.submit(run_task, payload, key=f"qconvert-{index}-{token}", pure=False,
                                           retries=executor.retries, resources=resources)
                    running[future.key] = (future, index, job, time.monotonic())
                    finished.add(future)
                future = next(finished)
                _, index, job, submitted = running.pop(future.key)
                items[index] = _item(distributed, future, job, time.monotonic() - submitted, wall)
                model_done()
                if on_done:
                    on_done(items[index])
    finally:
        for future, *_ in running.values():
            future.cancel()
    return items


def _item(distributed: Any, future: Any, job: PipelineJob, seconds: float, wall: float) -> BatchItem:
    try:
        done: TaskOutcome = future.result()
    except distributed.KilledWorker as exc:
        return collect(job, RuntimeFailure(
            f"the Dask workers that ran {job.model} died each time ({first_line(exc)}): a crash in onnxruntime or "
            "onnx, or the worker's memory limit", hint="run this model alone with --debug to see where"), seconds)
    except Exception as exc:  # noqa: BLE001 - the task itself failed (not the job): that model's failure
        return collect(job, RuntimeFailure(f"the Dask task for {job.model} failed: {first_line(exc)}",
                                           hint="check the workers' logs and qconvert's version on them"), seconds)
    outcome: PipelineResult | QconvertError = pickle.loads(done.outcome)  # our own task's, above
    if done.outputs is not None and isinstance(outcome, PipelineResult):
        _write_outputs(job.output, done.outputs)
    item = collect(job, outcome, seconds)
    item.worker, item.waited = done.worker, max(0.0, done.started - wall)
    return item


def _input_files(job: PipelineJob) -> list[Path]:
    """Every file the job reads: the model and its sidecars, and its data and text files (a folder's
    files included)."""
    found: list[Path] = list(model_files(job.model))
    sources = [d.source for d in (job.calibration, job.evaluation, job.search.evaluation if job.search else None)
               if isinstance(d, DataConfig)]
    for text in (job.calibration_text, job.evaluation_text):
        if isinstance(text, TextData):
            sources += [str(p) for p in (text.text, text.tokenizer, text.tokens) if p is not None]
    for source in sources:
        path = Path(source)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
    return list(dict.fromkeys(p.resolve() for p in found))


def _bundle(job: PipelineJob, limit: int, warnings: list[str]) -> dict[str, bytes] | None:
    files = _input_files(job)
    total = sum(p.stat().st_size for p in files)
    if total > limit:
        warnings.append(f"{job.model}: its inputs ({total / 2**20:.0f} MiB) are over the send limit: its worker must "
                        "see them at the same paths")
        return None
    return {str(p): p.read_bytes() for p in files}


def _sees(sizes: dict[str, int]) -> bool:
    """Whether this process sees these files, at these sizes (a file system shared with the client)."""
    return all(Path(name).is_file() and Path(name).stat().st_size == size for name, size in sizes.items())


def _shared(client: Any, job: PipelineJob) -> bool:
    """Whether every worker sees the client's files: asked once, of the first job's inputs. Then no
    input travels with a task."""
    answers = client.run(_sees, {str(p): p.stat().st_size for p in _input_files(job)})
    return bool(answers) and all(answers.values())


def run_task(payload: Payload) -> TaskOutcome:
    """A Dask task: one model's job, on the worker's own files or on those sent with it."""
    began = time.time()
    try:
        from distributed import get_worker

        worker = str(get_worker().address)
    except (ImportError, ValueError):
        worker = "in-process"
    with contextlib.suppress(OSError):
        os.dup2(2, 1)  # a worker's stdout may be the client's (a local cluster): results only go there
    logging.getLogger("qconvert").setLevel(payload.level)
    if payload.files is None or _sees({name: len(data) for name, data in payload.files.items()}):
        return TaskOutcome(pickle.dumps(run_one(payload.job)), worker, began)
    with tempfile.TemporaryDirectory(prefix="qconvert-task-") as tmp:
        job, homes = _rebased(payload.job, payload.files, Path(tmp))
        outcome = run_one(job)
        out = job.output.parent
        outputs = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} if out.is_dir() else {}
        return TaskOutcome(pickle.dumps(_rehome(outcome, homes)), worker, began, outputs)


def _rebased(job: PipelineJob, files: dict[str, bytes], root: Path) -> tuple[PipelineJob, dict[str, str]]:
    """The job on copies of its files under `root` (each folder's files together, so a model finds
    its sidecar), its output in `root/out`; and the map back from the copies' paths to the originals'."""
    folders: dict[str, Path] = {}
    for name, data in files.items():
        original = Path(name)
        folder = folders.setdefault(str(original.parent), root / f"in{len(folders)}")
        folder.mkdir(exist_ok=True)
        (folder / original.name).write_bytes(data)
    out = root / "out"
    out.mkdir()
    moved = {**{old: str(new) for old, new in folders.items()}, str(job.output.parent.resolve()): str(out)}

    def move(value: Any) -> Any:
        text = str(Path(value).resolve()) if isinstance(value, Path | str) and value else value
        for old, new in moved.items():
            if isinstance(text, str) and (text == old or text.startswith(old + os.sep)):
                return type(value)(new + text[len(old):])
        return value

    def rebase(d: Any) -> Any:
        if isinstance(d, DataConfig):
            return dataclasses.replace(d, source=move(d.source))
        if isinstance(d, TextData):
            return dataclasses.replace(d, text=d.text and move(d.text), tokenizer=d.tokenizer and move(d.tokenizer),
                                       tokens=d.tokens and move(d.tokens))
        return d

    search = job.search and dataclasses.replace(job.search, evaluation=rebase(job.search.evaluation))
    rebased = dataclasses.replace(job, model=move(job.model), output=out / job.output.name,
                                  calibration=rebase(job.calibration), evaluation=rebase(job.evaluation), search=search,
                                  calibration_text=rebase(job.calibration_text),
                                  evaluation_text=rebase(job.evaluation_text))
    return rebased, {new: old for old, new in moved.items()}


def _rehome(value: Any, homes: dict[str, str]) -> Any:
    """`value` (a result, deeply) with every path under a task folder put back at the client's."""
    if isinstance(value, str):
        for new, old in homes.items():
            if value == new or value.startswith(new + os.sep):
                return old + value[len(new):]
        return value
    if isinstance(value, Path):
        return Path(_rehome(str(value), homes))
    if isinstance(value, list):
        return [_rehome(v, homes) for v in value]
    if isinstance(value, tuple):
        return tuple(_rehome(v, homes) for v in value)
    if isinstance(value, dict):
        return {k: _rehome(v, homes) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _rehome(getattr(value, f.name), homes) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, QconvertError):
        return type(value)(_rehome(value.message, homes), hint=value.hint and _rehome(value.hint, homes),
                           details=tuple(_rehome(d, homes) for d in value.details))
    return value


def _write_outputs(output: Path, files: dict[str, bytes]) -> None:
    """The output a worker sent back, written beside `output` all or nothing: the model last."""
    with staging_dir(output) as work:
        for name, data in files.items():
            (work / name).write_bytes(data)
        for name in files:  # its sidecar (named by digest) and the model folder's files first
            if name != output.name:
                os.replace(work / name, output.parent / name)
        move_into_place(work / output.name, output)
