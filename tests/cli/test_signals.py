"""The installed command runs each job in a supervised worker: Ctrl-C, SIGTERM, a crash, a hang or
a memory blow-up in the worker become exit codes, and nothing is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qconvert.errors import ExitCode
from qconvert.model.files import TEMP_SUFFIX, _pid_alive
from tests import models
from tests.corpus import snapshot

EXE = Path(sys.executable).with_name("qconvert")
PLUGIN = '''
import ctypes, pathlib, signal, time
import numpy as np

MARK = pathlib.Path(__file__).with_name("started")

def _x(i):
    return {"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)}

def slow():
    MARK.touch()
    for i in range(10_000):
        time.sleep(0.01)
        yield _x(i)

def deaf():  # like a long onnxruntime call: no signal reaches Python
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    MARK.touch()
    time.sleep(60)
    yield _x(0)

def crash():
    MARK.touch()
    ctypes.string_at(0)
    yield _x(0)

def hog():
    MARK.touch()
    block = np.ones(2**28)
    time.sleep(60)
    yield {"x": block}
'''


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A model, the plugin file, and an existing output that every interrupted run must leave intact."""
    model = models.save(models.mlp(), tmp_path / "m.onnx")
    (tmp_path / "plugin.py").write_text(PLUGIN)
    out = tmp_path / "q.onnx"
    subprocess.run([str(EXE), "quantize", str(model), "-o", str(out)], check=True, capture_output=True, timeout=120)
    return model, tmp_path / "plugin.py", out


def _start(args: list[str], plugin: Path, reader: str, *, before: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(EXE), *before, *args, "--calib", f"{plugin}:{reader}", "--mode", "static",
                             "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mark = plugin.with_name("started")
    deadline = time.monotonic() + 60
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def _finish(proc: subprocess.Popen[str], *, within: float) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=within)
    return proc.returncode, out, err


@pytest.mark.parametrize(("reader", "sig", "code"), [
    ("slow", signal.SIGINT, ExitCode.INTERRUPTED),
    ("deaf", signal.SIGINT, ExitCode.INTERRUPTED),
    ("slow", signal.SIGTERM, ExitCode.TERMINATED),
    ("deaf", signal.SIGTERM, ExitCode.TERMINATED),
])
def test_interrupts_end_the_run_cleanly(job: tuple[Path, Path, Path], reader: str, sig: int, code: int) -> None:
    model, plugin, out = job
    before = snapshot(model.parent)
    proc = _start(["quantize", str(model), "-o", str(out)], plugin, reader)
    proc.send_signal(sig)
    # The worker gets 1 s to unwind before it is killed; the bound only catches a hang (the run is 60 s).
    returncode, stdout, stderr = _finish(proc, within=10)
    assert returncode == code and stdout == "" and "Traceback" not in stderr
    if sig == signal.SIGINT:
        assert "interrupted" in stderr
    (model.parent / "started").unlink()
    assert snapshot(model.parent) == {k: v for k, v in before.items() if k != "started"}


@pytest.mark.parametrize(("reader", "before", "message"), [
    ("crash", (), "died from SIGSEGV"),
    ("deaf", ("--timeout", "1"), "timed out after 1 s"),
    ("hog", ("--max-memory", "600M"), "more than --max-memory 600 MiB"),
])
def test_crashes_and_budgets_are_exit_4(job: tuple[Path, Path, Path], reader: str, before: tuple[str, ...],
                                        message: str) -> None:
    model, plugin, out = job
    files = snapshot(model.parent)
    proc = _start(["quantize", str(model), "-o", str(out)], plugin, reader, before=before)
    returncode, _, stderr = _finish(proc, within=60)
    assert returncode == ExitCode.ENVIRONMENT, stderr
    assert stderr.startswith("error:") and message in stderr and "hint:" in stderr and "Traceback" not in stderr
    # A 1 s budget can run out before the reader starts: importing onnx alone takes 0.7 s here (ml_dtypes).
    (model.parent / "started").unlink(missing_ok=True)
    assert snapshot(model.parent) == {k: v for k, v in files.items() if k != "started"}


def test_a_killed_supervisor_takes_its_worker_along_and_the_next_run_cleans_up(
        job: tuple[Path, Path, Path]) -> None:
    model, plugin, out = job
    proc = _start(["quantize", str(model), "-o", str(out)], plugin, "slow")
    deadline = time.monotonic() + 60
    while not (staged := list(model.parent.glob(f"*{TEMP_SUFFIX}"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert staged, "the worker is staging its output"
    worker = int(staged[0].name[len(".q.onnx."):].split(".")[0])
    proc.kill()
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while _pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(worker), "the worker died with its parent"
    subprocess.run([str(EXE), "quantize", str(model), "-o", str(out), "--force"], check=True, capture_output=True,
                   timeout=120)
    assert not list(model.parent.glob(f"*{TEMP_SUFFIX}"))

