"""`qconvert analyze`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    DataOpt,
    ImageSizeOpt,
    JsonOpt,
    LayoutOpt,
    MeanOpt,
    ReportOpt,
    SaveRecipeOpt,
    ShapeOpt,
    SkipLabelsOpt,
    StdOpt,
)

TopOpt = Annotated[int | None, typer.Option(
    "--top", min=1, help="Show only the worst N nodes and tensors.",
    show_default="20 in the table, all in --json")]
AnalyzeSamplesOpt = Annotated[int, typer.Option(
    "--samples", min=1, help="Evaluation samples to analyze (three model runs each).")]


@command("analyze")
def analyze(
    ctx: typer.Context,
    fp32_model: Annotated[Path, typer.Argument(help="The FP32 original.", show_default=False)],
    quantized_model: Annotated[Path, typer.Argument(help="The quantized model.", show_default=False)],
    data: DataOpt,
    labels: SkipLabelsOpt = None,
    samples: AnalyzeSamplesOpt = 32,
    top: TopOpt = None,
    shape: ShapeOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: LayoutOpt = None,
    allow_nonfinite: AllowNonfiniteOpt = False,
    report: ReportOpt = None,
    save_recipe: SaveRecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank the nodes of a quantized model by the error each adds on its own, worst first."""
    from qconvert import analyze as run_analyze
    from qconvert.cli import render
    from qconvert.cli.app import conclude

    plan = options.report_plan(ctx, report)
    data_config = options.data_from(ctx, data, samples=samples, labels=labels)
    result = run_analyze(fp32_model, quantized_model, data_config, top=top)
    conclude(result, plan, lambda: render.analyze_result(result, as_json=as_json, top=top or 20))
