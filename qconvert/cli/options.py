"""Shared option types and parsers for the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.errors import UsageError

ModelArg = Annotated[Path, typer.Argument(help="ONNX model file.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--shape", help="Concrete shape for an input with dynamic dims, e.g. image=1,3,224,224 (repeatable).",
    show_default=False)]
CalibSamplesOpt = Annotated[int | None, typer.Option(
    "--calib-samples", min=1, help="Use at most this many calibration samples.", show_default=False)]
ImageSizeOpt = Annotated[str | None, typer.Option(
    "--image-size", help="Image folders: resize to H,W (or one number for square).", show_default=False)]
MeanOpt = Annotated[str, typer.Option("--mean", help="Image folders: per-channel mean after scaling to [0,1].")]
StdOpt = Annotated[str, typer.Option("--std", help="Image folders: per-channel std after scaling to [0,1].")]


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{what}: expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{what}: expected positive integers, got {text!r}")
    return values


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise UsageError(f"{what}: expected at least one number")
    return values


def parse_shapes(items: list[str] | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    shapes = []
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--shape {item!r}: expected NAME=D0,D1,…", hint="e.g. --shape image=1,3,224,224")
        shapes.append((name, parse_ints(dims, f"--shape {name}")))
    return tuple(shapes)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    dims = parse_ints(text, "--image-size")
    if len(dims) == 1:
        return dims[0], dims[0]
    if len(dims) == 2:
        return dims[0], dims[1]
    raise UsageError(f"--image-size: expected H,W or one number, got {text!r}")
