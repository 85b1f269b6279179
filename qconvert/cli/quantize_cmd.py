"""`qconvert quantize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli.app import command
from qconvert.cli.options import (
    CalibSamplesOpt,
    ForceOpt,
    ImageSizeOpt,
    JsonOpt,
    MeanOpt,
    ModelArg,
    ShapeOpt,
    StdOpt,
    parse_floats,
    parse_image_size,
    parse_shapes,
)
from qconvert.config import ActivationType, CalibrationMethod, Layout, Mode, WeightType


@command("quantize")
def quantize(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the quantized model.",
                                         show_default=False)],
    calib: Annotated[str | None, typer.Option(
        "--calib", help="Calibration data: .npz file or folder, .npy folder, ONNX test-data folder, image "
                        "folder, file.py:function, package.module:function, or 'synthetic'.",
        show_default=False)] = None,
    mode: Annotated[Mode | None, typer.Option(
        help="static (QDQ, needs --calib) or dynamic; default: static with --calib, else dynamic.",
        show_default=False)] = None,
    activations: Annotated[ActivationType, typer.Option(help="Activation type (static mode).")] = ActivationType.UINT8,
    weights: Annotated[WeightType, typer.Option(help="Weight type.")] = WeightType.INT8,
    per_channel: Annotated[bool, typer.Option(
        "--per-channel/--per-tensor", help="Weight scales per output channel.")] = True,
    reduce_range: Annotated[bool, typer.Option(help="7-bit weights (for CPUs without VNNI).")] = False,
    symmetric_activations: Annotated[bool, typer.Option(help="Symmetric activation ranges.")] = False,
    symmetric_weights: Annotated[bool, typer.Option(help="Symmetric weight ranges.")] = True,
    method: Annotated[CalibrationMethod, typer.Option(
        help="Calibration method (static mode).")] = CalibrationMethod.MINMAX,
    percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
    op_types: Annotated[list[str] | None, typer.Option(
        "--op-types", help="Quantize only these op types (repeatable or comma-separated).", show_default=False)] = None,
    exclude_op_types: Annotated[list[str] | None, typer.Option(
        "--exclude-op-types", help="Never quantize these op types (repeatable or comma-separated).",
        show_default=False)] = None,
    exclude_nodes: Annotated[list[str] | None, typer.Option(
        "--exclude-nodes", help="Keep nodes whose name matches this glob in float (repeatable).",
        show_default=False)] = None,
    subgraphs: Annotated[bool | None, typer.Option(
        "--subgraphs/--no-subgraphs", help="Quantize inside If/Loop/Scan bodies [default: when present].",
        show_default=False)] = None,
    preprocess: Annotated[bool, typer.Option(
        "--preprocess/--no-preprocess", help="Shape inference, constant folding, initializer fixes first.")] = True,
    calib_samples: CalibSamplesOpt = None,
    shape: ShapeOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: Annotated[Layout | None, typer.Option(help="Image folders: tensor layout [default: from the model].",
                                                  show_default=False)] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize a model: static QDQ with calibration data, or dynamic."""
    from qconvert import DataConfig, QuantizeConfig, input_specs, load_model, open_data
    from qconvert import quantize as run_quantize
    from qconvert.cli import render

    config = QuantizeConfig(
        mode=mode, activations=activations, weights=weights, per_channel=per_channel, reduce_range=reduce_range,
        symmetric_activations=symmetric_activations, symmetric_weights=symmetric_weights, method=method,
        percentile=percentile, op_types=_split(op_types), exclude_op_types=_split(exclude_op_types),
        exclude_nodes=tuple(exclude_nodes or ()), subgraphs=subgraphs, preprocess=preprocess,
    )
    data_config = None
    if calib is not None:
        data_config = DataConfig(
            source=calib, max_samples=calib_samples, shapes=parse_shapes(shape),
            image_size=parse_image_size(image_size), mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"), layout=layout,
        )
    loaded = load_model(model)
    data = open_data(data_config, input_specs(loaded.proto)) if data_config else None
    result = run_quantize(loaded, output, data, config=config, force=force)
    if as_json:
        render.print_json(result.to_dict())
        render.warnings(result.warnings)
    else:
        render.quantize_result(result)


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())
