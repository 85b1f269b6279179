"""Worker processes: how a worker dies with its parent and unwinds on SIGTERM (the CLI's supervised
worker, batch workers, the console script itself)."""

from __future__ import annotations

import contextlib
import os
import signal

from qconvert.errors import ExitCode


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a kill -9 of the parent leaves no
    orphan worker behind); exit at once when the parent is already gone."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(int(ExitCode.TERMINATED))


def unwind_on(*signums: signal.Signals) -> None:
    """The one handler for SIGINT and SIGTERM in qconvert's processes: the first of `signums` to
    arrive unwinds the process (SIGINT as KeyboardInterrupt, SIGTERM as exit 143), so its `finally`
    blocks remove its temporaries; later ones — the terminal and a parent may both send one — are
    ignored, so they cannot interrupt that cleanup."""

    def unwind(signum: int, _frame: object) -> None:
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(int(ExitCode.TERMINATED))

    for s in signums:
        signal.signal(s, unwind)
