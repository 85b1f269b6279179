"""Running a command in a worker process, so that what native code does to a process — a segfault,
the OOM killer, a hang, a Ctrl-C that Python cannot see until onnxruntime returns — becomes an exit
code and a message from a parent that is still alive.

The parent forks before any model is touched, forwards SIGINT/SIGTERM, gives the worker
`GRACE_SECONDS` to clean up, then kills it and removes the temporary files it had logged. Budgets
(`--timeout`, `--max-memory`) are enforced the same way. POSIX only: elsewhere commands run in-process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qconvert.errors import EnvironmentFailure, ExitCode, QconvertError, RuntimeFailure, UsageError
from qconvert.model.files import record_temporaries, remove_temporary
from qconvert.workflows.processes import die_with_parent, unwind_on

GRACE_SECONDS = 1.0  # a forwarded Ctrl-C lets the worker unwind this long before it is killed
POLL_SECONDS = 0.02
_EXIT_FOR_SIGNAL = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """Limits on one command: wall-clock seconds and resident memory in bytes (None: unlimited)."""

    timeout: float | None = None
    max_memory: int | None = None


def parse_size(text: str) -> int:
    """'512M', '8G', '1.5GiB', '1000000' -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--max-memory {text!r} is not a size", hint="write it like 512M, 8G or 1.5GiB")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


def available() -> bool:
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def supervise(body: Callable[[], int], budget: Budget) -> int | QconvertError:
    """Run `body` (which renders its own results and errors and returns an exit code) in a forked
    worker. Returns the worker's exit code, or the error to report when the worker was killed:
    by a signal of its own (a crash), by a budget, or after an interrupt it did not finish."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _worker(body, write_end)
    os.close(write_end)
    os.set_blocking(read_end, False)
    received: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in _EXIT_FOR_SIGNAL}
    logged = bytearray()
    try:
        outcome = _watch(pid, budget, received, read_end, logged)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        _drain(read_end, logged)
        os.close(read_end)
    if not isinstance(outcome, int) or outcome in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
        for line in logged.decode(errors="replace").splitlines():
            remove_temporary(Path(line))
    return outcome


def _worker(body: Callable[[], int], log_fd: int) -> None:
    code: int = ExitCode.INTERNAL
    try:
        die_with_parent()
        record_temporaries(functools.partial(_log_temporary, log_fd))
        unwind_on(signal.SIGINT, signal.SIGTERM)
        code = body()
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else ExitCode.INTERNAL
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(int(code))


def _log_temporary(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"{path}\n".encode())


def _watch(pid: int, budget: Budget, received: list[int], log_fd: int, logged: bytearray) -> int | QconvertError:
    started = time.monotonic()
    kill_at: float | None = None
    verdict: QconvertError | None = None
    forwarded = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        _drain(log_fd, logged)
        now = time.monotonic()
        if len(received) > forwarded:
            if forwarded == 0:
                kill_at = now + GRACE_SECONDS
            os.kill(pid, received[forwarded])
            forwarded += 1
        if verdict is None:
            verdict = _over_budget(pid, budget, now - started)
            if verdict is not None:
                os.kill(pid, signal.SIGKILL)
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = None
        time.sleep(POLL_SECONDS)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if verdict is not None:
        return verdict
    if received:
        from qconvert.cli import render

        render.interrupted()
        return _EXIT_FOR_SIGNAL[signal.Signals(received[0])]
    sig = signal.Signals(os.WTERMSIG(status))
    return RuntimeFailure(
        f"the worker process died from {sig.name} (a crash in onnxruntime or onnx, or the system's "
        "out-of-memory killer)",
        hint="re-run with --debug to see the last phase; if memory ran out, use fewer --calib-samples or "
             "set --max-memory to fail early")


def _over_budget(pid: int, budget: Budget, elapsed: float) -> QconvertError | None:
    if budget.timeout is not None and elapsed > budget.timeout:
        return EnvironmentFailure(f"timed out after {budget.timeout:g} s (--timeout)",
                                  hint="raise --timeout, or give fewer samples or runs")
    if budget.max_memory is not None:
        rss = _resident_bytes(pid)
        if rss > budget.max_memory:
            return EnvironmentFailure(
                f"used {rss / 2**20:.0f} MiB, more than --max-memory {budget.max_memory / 2**20:.0f} MiB; stopped",
                hint="raise --max-memory, or use fewer --calib-samples")
    return None


def _resident_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _drain(fd: int, into: bytearray) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            into.extend(chunk)
