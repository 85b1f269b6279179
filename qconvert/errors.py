"""One error hierarchy; every error carries its exit code and a hint.

The exit-code table lives here and only here; the CLI maps exceptions to codes in one place
(`qconvert.cli.app.run`).
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    INTERNAL = 1  # a bug in qconvert
    BAD_INPUT = 2  # bad model, data, options or output path
    GATE_FAILED = 3  # a quality gate (accuracy, speed) was missed
    ENVIRONMENT = 4  # missing dependency, crashed runtime, out of memory or disk
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


class QconvertError(Exception):
    """Base of every error qconvert raises on purpose.

    `message` says what happened, `hint` what to do next, `details` lists individual findings
    (for example every mismatch between calibration data and the model's inputs).
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled whole, hint and details too (a batch worker hands its error to the parent)."""
        return _rebuild, (type(self), self.message, self.hint, self.details)

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "details": list(self.details),
            "exit_code": int(self.exit_code),
        }


def _rebuild(cls: type[QconvertError], message: str, hint: str | None, details: tuple[str, ...]) -> QconvertError:
    return cls(message, hint=hint, details=details)


class InputError(QconvertError):
    """The user's input (model, data, options, paths) cannot be used."""

    exit_code = ExitCode.BAD_INPUT


class UsageError(InputError):
    """Options that contradict each other or are malformed."""


class ModelError(InputError):
    """The model file is missing, unreadable, malformed or unsupported."""


class DataError(InputError):
    """Calibration or evaluation data is missing, malformed or does not match the model."""


class OutputError(InputError):
    """The output path cannot be written as asked (exists without --force, is the input, …)."""


class NothingQuantizedError(InputError):
    """Quantization would produce a model with no quantized node."""


class GateFailedError(QconvertError):
    """A quality gate was missed."""

    exit_code = ExitCode.GATE_FAILED


class EnvironmentFailure(QconvertError):
    """A dependency is missing, or the runtime, memory or disk failed us."""

    exit_code = ExitCode.ENVIRONMENT


class MissingDependencyError(EnvironmentFailure):
    """An optional dependency (an extra) is not installed."""


class RuntimeFailure(EnvironmentFailure):
    """onnxruntime failed while running or quantizing the model."""


class InternalError(QconvertError):
    """A bug in qconvert: an exception that none of qconvert's own errors describes."""

    exit_code = ExitCode.INTERNAL


def as_error(exc: Exception, *, hint: str = "this is a bug in qconvert; re-run with --debug for the traceback",
             ) -> QconvertError:
    """What an exception that escaped every step means to the user: qconvert's own errors as they
    are, memory and file-system failures as the environment's (exit 4), anything else a bug
    (exit 1) with `hint`. The CLI and batch workers both map exceptions to exit codes with this."""
    if isinstance(exc, QconvertError):
        return exc
    if isinstance(exc, MemoryError | OSError):
        return from_system_error(exc)
    return InternalError(f"{type(exc).__name__}: {exc}", hint=hint)


def from_system_error(exc: MemoryError | OSError) -> EnvironmentFailure:
    """What memory and file-system failures that escaped every step mean to the user (exit 4)."""
    if isinstance(exc, MemoryError):
        return EnvironmentFailure("out of memory", hint="use fewer --calib-samples, a smaller --batch, or a bigger "
                                                        "machine; --max-memory stops a run early and cleanly")
    where = f": {exc.filename}" if exc.filename else ""
    if out_of_space(exc):
        return EnvironmentFailure(f"no space left on the device{where}",
                                  hint="free some disk space; the previous output, if any, is untouched")
    return EnvironmentFailure(f"{exc.strerror or exc}{where}", hint="check the path, its permissions and the disk")


def out_of_space(exc: OSError) -> bool:
    """A full disk or an exhausted quota: the environment's failure (exit 4), whatever was being written."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnxruntime's run to many), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
