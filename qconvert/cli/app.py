"""The Typer application and the one place where errors become exit codes."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from contextvars import ContextVar
from typing import Annotated, Any, TypeVar

import typer

from qconvert.errors import ExitCode, QconvertError

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


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
) -> None:
    _debug.set(debug)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        try:  # onnxruntime's C++ warnings would drown our own messages
            import onnxruntime

            onnxruntime.set_default_logger_severity(3)
        except ImportError:
            pass


def command(name: str) -> Callable[[F], F]:
    """Register a command whose exceptions map to exit codes here and nowhere else."""
    from qconvert.cli import render

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(kwargs.get("as_json"))
            try:
                return func(*args, **kwargs)
            except QconvertError as exc:
                if _debug.get():
                    logging.getLogger("qconvert").exception("error")
                render.error(exc, as_json=as_json)
                raise typer.Exit(int(exc.exit_code)) from None
            except KeyboardInterrupt:
                render.interrupted()
                raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:
                if _debug.get():
                    raise
                render.internal_error(exc)
                raise typer.Exit(int(ExitCode.INTERNAL)) from None

        app.command(name)(wrapper)
        return func

    return decorate


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(int(ExitCode.TERMINATED))


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    app()


# Importing the command modules registers them on `app`.
from qconvert.cli import analyze_cmd as _analyze_cmd  # noqa: E402,F401
from qconvert.cli import benchmark_cmd as _benchmark_cmd  # noqa: E402,F401
from qconvert.cli import inspect_cmd as _inspect_cmd  # noqa: E402,F401
from qconvert.cli import providers_cmd as _providers_cmd  # noqa: E402,F401
from qconvert.cli import quantize_cmd as _quantize_cmd  # noqa: E402,F401
from qconvert.cli import validate_cmd as _validate_cmd  # noqa: E402,F401
