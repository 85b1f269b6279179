"""Progress of the library's long loops, for a front end to show.

The library never draws anything. A loop announces a *task* and advances it as it goes:

    with progress.task("validation", total=data.expected_samples()) as step:
        for sample in data:
            ...
            step()

Nothing is reported unless the caller installed a `Reporter` with `reporting(reporter)` (the CLI
installs Rich bars when stderr is a terminal). Without one, which is the default for Python callers,
tests and batch workers, `task` yields a step that does nothing: a task costs one ContextVar lookup,
a step one empty call.

The contract a `Reporter` keeps:

- `start(description, total)` when a task begins; `total` is the number of steps when known, else
  None. It returns a handle (any object) that the two calls below receive.
- `advance(handle, steps)` after `steps` more steps are done.
- `finish(handle)` exactly once, when the task ends, by an exception too, and possibly short of
  `total` (a search that meets its target early, a data source with fewer samples than expected).
- Tasks nest (a validation inside an accuracy-search trial): a task may start while others run;
  each has its own handle, and the inner one finishes first.
- Calls come from the thread that runs the library code. A reporter must not raise: what it shows
  is never worth failing the work for.

The reporter lives in a ContextVar, so it reaches exactly the code run inside `reporting`: other
threads and processes (batch workers) report nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["Reporter", "Step", "reporting", "task"]


class Reporter(Protocol):
    """Receives the progress of the library's tasks (see the module docstring for the contract)."""

    def start(self, description: str, total: int | None) -> object: ...

    def advance(self, handle: object, steps: int) -> None: ...

    def finish(self, handle: object) -> None: ...


class Step(Protocol):
    """Called by a loop after each step of its task (or with the number of steps just done)."""

    def __call__(self, steps: int = 1) -> None: ...


_reporter: ContextVar[Reporter | None] = ContextVar("qconvert_progress", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the progress of the library calls made inside the block to `reporter` (None: to nobody)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def _unwatched(steps: int = 1) -> None:
    """The step of a task no reporter watches."""


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Step]:
    """A task of `total` steps (None: unknown) reported while the block runs; yields its `Step`."""
    reporter = _reporter.get()
    if reporter is None:
        yield _unwatched
        return
    handle = reporter.start(description, total)

    def step(steps: int = 1) -> None:
        reporter.advance(handle, steps)

    try:
        yield step
    finally:
        reporter.finish(handle)
