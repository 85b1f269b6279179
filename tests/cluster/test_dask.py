"""Batches on a Dask cluster: the scheduler of DASK_SCHEDULER_ADDRESS when it is set (CI starts
one and two workers on 127.0.0.1, `tests/cluster/run.sh`), else a local cluster on 127.0.0.1 per
module. Outputs are byte-identical to the local executor's, the JSON names the worker, a worker
killed mid-batch loses no model, and files travel with the task for workers that cannot see them."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qconvert import BenchmarkConfig, DataConfig, PipelineJob, run_batch
from qconvert.cli.app import app
from qconvert.config import Executor, ExecutorConfig
from qconvert.errors import EnvironmentFailure, ExitCode, UsageError
from qconvert.results import PipelineResult, Status
from qconvert.workflows.cluster import Payload, _bundle, _write_outputs, run_task
from tests import models
from tests.conftest import SAMPLES

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        yield address
        return
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  resources={"qconvert": 1}, silence_logs=50) as cluster:
        yield cluster.scheduler_address


def _models(folder: Path) -> list[Path]:
    folder.mkdir()
    found = [models.save(models.conv_mlp(seed), folder / f"cnn{seed}.onnx") for seed in range(2)]
    found.append(models.save(models.mlp(3), folder / "mlp.onnx"))
    return [*found, SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_transformer.onnx"]


def test_a_batch_on_the_cluster_is_byte_identical_to_local(tmp_path: Path, scheduler: str) -> None:
    paths = _models(tmp_path / "in")
    runner = CliRunner()
    outputs = {}
    for name, extra in (("local", []), ("dask", ["--executor", "dask", "--scheduler", scheduler])):
        done = runner.invoke(app, ["quantize", *map(str, paths), "-o", str(tmp_path / name), "--jobs", "2",
                                   "--json", *extra])
        assert done.exit_code == 0, done.output
        outputs[name] = json.loads(done.stdout)
    local, dask = outputs["local"], outputs["dask"]
    assert local["executor"] == "local" and dask["executor"] == f"dask {scheduler}"
    assert [m["status"] for m in dask["models"]] == ["passed"] * len(paths)
    for item in dask["models"]:
        assert item["worker"].startswith("tcp://127.0.0.1:") and item["waited_seconds"] >= 0
    assert all(m["worker"].startswith("local process ") for m in local["models"])
    for path in paths:
        name = f"{path.stem}.quant.onnx"
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_a_worker_killed_mid_batch_loses_no_model(tmp_path: Path, scheduler: str) -> None:
    paths = _models(tmp_path / "in")[:3]
    slow = BenchmarkConfig(runs=2000)  # seconds each: the kill lands while jobs run
    jobs = [PipelineJob(model=p, output=tmp_path / f"{p.stem}.out.onnx", benchmark=slow) for p in paths]
    client = distributed.Client(scheduler, set_as_default=False)
    killed: list[int] = []
    try:
        def kill_one() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the first worker seen running a task
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_one)
        killer.start()
        result = run_batch(jobs, workers=2, executor=ExecutorConfig(kind=Executor.DASK, scheduler=scheduler))
        killer.join()
    finally:
        client.close()
    assert killed, "no worker was seen running a job"
    assert [i.status for i in result.items] == [Status.PASSED] * len(paths), [i.error for i in result.items]
    assert all(j.output.is_file() for j in jobs)


def test_files_travel_with_the_task_when_the_worker_cannot_see_them(tmp_path: Path) -> None:
    src = models.save(models.conv_mlp(), tmp_path / "cnn.onnx")
    calib = models.write_npz(models.conv_mlp(), tmp_path / "calib.npz", samples=8)
    job = PipelineJob(model=src, output=tmp_path / "out" / "cnn.q.onnx", calibration=DataConfig(str(calib)))
    (tmp_path / "out").mkdir()
    files = _bundle(job, 1 << 30, [])
    assert files is not None and set(files) == {str(src.resolve()), str(calib.resolve())}
    elsewhere = tmp_path / "client-only"  # paths this "worker" does not have
    moved = {str(elsewhere / Path(k).name): v for k, v in files.items()}
    remote_job = replace(job, model=elsewhere / "cnn.onnx", calibration=DataConfig(str(elsewhere / "calib.npz")))
    done = run_task(Payload(remote_job, moved, 30))
    assert done.outputs is not None and set(done.outputs) == {"cnn.q.onnx"}
    outcome = pickle.loads(done.outcome)
    assert isinstance(outcome, PipelineResult), outcome
    assert outcome.quantize.output_path == str((tmp_path / "out" / "cnn.q.onnx").resolve())
    assert "qconvert-task-" not in json.dumps(outcome.report())
    _write_outputs(job.output, done.outputs)
    local = tmp_path / "local.onnx"
    run_batch([replace(job, output=local)])
    assert job.output.read_bytes() == local.read_bytes()


def test_ctrl_c_cancels_the_batch_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """On a local cluster for the run (a shared cluster's running tasks finish where they are)."""
    paths = _models(tmp_path / "in")
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("qconvert")
    process = subprocess.Popen([str(exe), "quantize", *map(str, paths), "-o", str(out), "--executor", "dask",
                                "--jobs", "2", "--benchmark", "--runs", "20000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"})
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.qconvert-tmp")) and time.monotonic() < deadline:  # a job is writing
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert not list(out.glob(".*.qconvert-tmp")), "temporaries left beside the outputs"
    assert len(list(out.glob("*.onnx"))) < len(paths)


def test_bad_cluster_settings_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--scheduler is the address of a Dask scheduler"):
        ExecutorConfig(scheduler="tcp://127.0.0.1:8786")
    job = PipelineJob(model=models.save(models.mlp(), tmp_path / "m.onnx"), output=tmp_path / "o.onnx")
    with pytest.raises(EnvironmentFailure, match=re.escape("cannot reach the Dask scheduler at tcp://127.0.0.1:9")):
        run_batch([job], executor=ExecutorConfig(kind=Executor.DASK, scheduler="tcp://127.0.0.1:9",
                                                 connect_seconds=1))
    assert not (tmp_path / "o.onnx").exists()
    done = CliRunner().invoke(app, ["quantize", str(job.model), "-o", str(job.output), "--executor", "dask"])
    assert done.exit_code == ExitCode.BAD_INPUT and "--executor dask runs a batch" in done.output
