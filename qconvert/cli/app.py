"""The Typer application and the one place where errors become exit codes."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from qconvert.cli import supervise
from qconvert.errors import ExitCode, InternalError, QconvertError, as_error
from qconvert.results import AnalyzeResult, BatchResult

if TYPE_CHECKING:
    from qconvert.report.writing import Reported, ReportPlan

app = typer.Typer(
    name="qconvert",
    help="Quantize FP32 ONNX models for CPUs and NPUs, and prove what it cost.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])
_debug: ContextVar[bool] = ContextVar("qconvert_debug", default=False)
_quiet: ContextVar[bool] = ContextVar("qconvert_quiet", default=False)
_budget: ContextVar[supervise.Budget | None] = ContextVar("qconvert_budget", default=None)
# Set by the console script only: in-process callers (tests, embedding) run commands in-process.
_isolated: ContextVar[bool] = ContextVar("qconvert_isolated", default=False)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bars or warnings on stderr; errors still print.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.0, help="Stop (exit 4) after this many seconds.", show_default=False)] = None,
    max_memory: Annotated[str | None, typer.Option(
        "--max-memory", help="Stop (exit 4) when resident memory passes this size, e.g. 8G.",
        show_default=False)] = None,
) -> None:
    _debug.set(debug)
    _quiet.set(quiet)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _budget.set(supervise.Budget(timeout, supervise.parse_size(max_memory) if max_memory else None))
    except QconvertError as exc:
        from qconvert.cli import render

        render.error(exc, as_json=False)
        raise typer.Exit(int(exc.exit_code)) from None


def _quiet_runtime() -> None:
    """Done in the worker, never before the fork: onnxruntime must not start in a process that forks
    afterwards."""
    if not _debug.get():
        from qconvert.providers import quiet_native_logs

        quiet_native_logs()


def _run(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], as_json: bool) -> int:
    """Run a command body; every exception becomes its exit code here (`errors.as_error`)."""
    from qconvert.cli import render

    try:
        _quiet_runtime()
        if kwargs.get("save_recipe") is not None:
            from qconvert.cli import recipe

            recipe.save(kwargs["ctx"], kwargs["save_recipe"])
        with render.stderr_display(quiet=_quiet.get()):
            func(*args, **kwargs)
        return ExitCode.OK
    except KeyboardInterrupt:
        render.interrupted()
        return ExitCode.INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:
        error = as_error(exc)
        if not isinstance(error, InternalError):
            return _failed(error, as_json)
        if _debug.get():
            raise
        render.internal_error(exc)
        return ExitCode.INTERNAL


def _failed(exc: QconvertError, as_json: bool) -> int:
    from qconvert.cli import render

    if _debug.get():
        logging.getLogger("qconvert").exception("error")
    render.error(exc, as_json=as_json)
    return int(exc.exit_code)


def command(name: str, *, isolate: bool = True, **settings: Any) -> Callable[[F], F]:
    """Register a command whose exceptions map to exit codes in `_run` and nowhere else. From the
    console script, the command runs in a supervised worker unless `isolate` is false (for
    commands that only dispatch to another). A command with a `save_recipe` option writes its
    recipe first."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            as_json = bool(kwargs.get("as_json"))
            if isolate and _isolated.get() and supervise.available():
                outcome = supervise.supervise(lambda: _run(func, args, kwargs, as_json),
                                               _budget.get() or supervise.Budget())
                code = outcome if isinstance(outcome, int) else _failed(outcome, as_json)
            else:
                code = _run(func, args, kwargs, as_json)
            if code:
                raise typer.Exit(code)

        app.command(name, **settings)(wrapper)
        return func

    return decorate


def conclude(result: Reported, plan: ReportPlan | None, show: Callable[[], None]) -> None:
    """How every command that produces a result ends: its report, then the result on stdout (`show`:
    JSON or tables), then its verdict: exit 3 when a gate is missed, a batch's own exit code."""
    from qconvert.report.writing import write_reports

    if plan is not None:
        write_reports(result, plan)
    show()
    if isinstance(result, BatchResult):
        if result.exit_code:
            raise typer.Exit(result.exit_code)
    elif not isinstance(result, AnalyzeResult):
        result.raise_for_gates()


def main() -> None:
    """Console-script entry point: each command runs in a supervised worker process."""
    from qconvert.workflows.processes import unwind_on

    unwind_on(signal.SIGTERM)
    _isolated.set(True)
    app()


# Importing the command modules registers them on `app`.
from qconvert.cli import analyze_cmd as _analyze_cmd  # noqa: E402,F401
from qconvert.cli import benchmark_cmd as _benchmark_cmd  # noqa: E402,F401
from qconvert.cli import convert_cmd as _convert_cmd  # noqa: E402,F401
from qconvert.cli import inspect_cmd as _inspect_cmd  # noqa: E402,F401
from qconvert.cli import providers_cmd as _providers_cmd  # noqa: E402,F401
from qconvert.cli import quantize_cmd as _quantize_cmd  # noqa: E402,F401
from qconvert.cli import run_cmd as _run_cmd  # noqa: E402,F401
from qconvert.cli import validate_cmd as _validate_cmd  # noqa: E402,F401
