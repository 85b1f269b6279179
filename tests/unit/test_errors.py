"""One mapping from exceptions to errors and exit codes, and errors that cross process boundaries whole."""

from __future__ import annotations

import errno
import pickle

from qconvert.errors import DataError, EnvironmentFailure, ExitCode, InternalError, as_error
from qconvert.providers import ProviderUnavailableError


def test_every_escaped_exception_maps_to_one_error_and_exit_code() -> None:
    ours = DataError("bad sample", hint="fix it")
    assert as_error(ours) is ours and as_error(ours).exit_code == ExitCode.BAD_INPUT
    full = as_error(OSError(errno.ENOSPC, "No space left on device", "out.onnx"))
    assert isinstance(full, EnvironmentFailure) and full.exit_code == ExitCode.ENVIRONMENT
    assert "no space left" in full.message and "out.onnx" in full.message
    assert as_error(MemoryError()).exit_code == ExitCode.ENVIRONMENT
    bug = as_error(KeyError("x"), hint="run it alone")
    assert isinstance(bug, InternalError) and bug.exit_code == ExitCode.INTERNAL
    assert bug.message == "KeyError: 'x'" and bug.hint == "run it alone"


def test_errors_pickle_with_their_hint_and_details() -> None:
    for error in (DataError("bad", hint="h", details=("a", "b")), ProviderUnavailableError("no qnn", hint="pip")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and back.to_dict() == error.to_dict()
