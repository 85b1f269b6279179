"""`qconvert convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    CalibSamplesOpt,
    ForceOpt,
    ImageSizeOpt,
    JsonOpt,
    LayoutOpt,
    MeanOpt,
    ShapeOpt,
    StdOpt,
)
from qconvert.config import ACTIVATION_LIMIT, FloatType


@command("convert")
def convert(
    ctx: typer.Context,
    model: options.ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the converted model.",
                                         show_default=False)],
    to: Annotated[FloatType, typer.Option(
        "--to", help="fp16 (GPUs, NPUs, DirectML, OpenVINO GPU) or bf16 (onnxruntime's CPU provider runs "
                     "neither faster than FP32).")] = FloatType.FP16,
    io_types: Annotated[str, typer.Option(
        "--io-types", help="fp32: float32 inputs and outputs, casts inside (a drop-in replacement); or the "
                           "--to type.")] = "fp32",
    keep_float: Annotated[list[str] | None, typer.Option(
        "--keep-float", help="Keep nodes whose name matches this glob, or of this op type, in float32 (repeatable).",
        show_default=False)] = None,
    calib: Annotated[str | None, typer.Option(
        "--calib", help="Data to check float16 activation ranges on (read like quantize's --calib); without it "
                        "only weights are range-checked.", show_default=False)] = None,
    calib_samples: CalibSamplesOpt = None,
    ep: Annotated[str | None, typer.Option(
        "--ep", help="The provider the model is for: nodes it has no 16-bit kernel for stay float32.",
        show_default=False)] = None,
    max_activation: Annotated[float, typer.Option(
        "--max-activation", help="float16 with --calib: nodes reading or writing values beyond this stay float32.",
    )] = ACTIVATION_LIMIT,
    shape: ShapeOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: LayoutOpt = None,
    allow_nonfinite: AllowNonfiniteOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a model in 16-bit floats, keeping in float32 the nodes that would overflow or have no
    16-bit kernel, each with its reason."""
    from qconvert import FloatConfig, input_specs, load_model, open_data
    from qconvert import convert as run_convert
    from qconvert.cli import render
    from qconvert.errors import UsageError

    if io_types not in ("fp32", to.value):
        raise UsageError(f"--io-types takes fp32 or the --to type ({to.value}), got {io_types!r}",
                         hint="fp32 keeps the model a drop-in replacement")
    config = FloatConfig(to=to, io_float32=io_types == "fp32", keep_float=tuple(keep_float or ()), provider=ep,
                         activation_limit=max_activation)
    loaded = load_model(model)
    data = None
    if calib is not None:
        data = open_data(options.data_from(ctx, calib, samples=calib_samples), input_specs(loaded.proto))
    result = run_convert(loaded, output, data, config=config, force=force)
    if as_json:
        render.print_json(result.to_dict())
    else:
        render.convert_result(result)
