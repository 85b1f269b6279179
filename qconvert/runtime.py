"""Keeping onnxruntime's chatter off stdout, which belongs to results (`qconvert … --json | jq`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Send everything printed to stdout while onnxruntime works to stderr, at the file-descriptor
    level too (its calibrators `print`, some native banners write to fd 1), and silence the
    advice onnxruntime.quantization logs on the root logger ("consider pre-processing")."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    sys.stdout.flush()
    saved_fd = None
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real fd 1 (embedded interpreters): Python-level redirection still applies
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        root.setLevel(level)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnxruntime's run to many), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def signature(args: Iterable[Any]) -> list[tuple[str, str, int | None]]:
    """Name, type and rank of each onnxruntime NodeArg (session inputs or outputs): what two models
    must share to be fed the same data."""
    return [(a.name, a.type, None if a.shape is None else len(a.shape)) for a in args]


@functools.cache
def onnxruntime_distribution() -> str:
    """The package that installed the `onnxruntime` module: `onnxruntime`, or a build such as
    `onnxruntime-openvino` or `onnxruntime-gpu` that replaces it. Only the `onnxruntime*` records
    beside the module are read (`packages_distributions()` reads every installed package's, ~0.2 s)."""
    import importlib.util
    from importlib.metadata import Distribution

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return "onnxruntime"
    for info in sorted(Path(spec.origin).parent.parent.glob("onnxruntime*.dist-info")):
        dist = Distribution.at(info)
        if any(str(f) == "onnxruntime/__init__.py" for f in dist.files or []):
            return str(dist.metadata["Name"])
    return "onnxruntime"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a kill -9 of the parent leaves no
    orphan worker behind); exit at once when the parent is already gone."""
    import ctypes
    import signal

    from qconvert.errors import ExitCode

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(int(ExitCode.TERMINATED))
