"""`qconvert validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    DataOpt,
    EpOpt,
    EpOptionOpt,
    ImageSizeOpt,
    JsonOpt,
    LabelsOpt,
    LayoutOpt,
    MaxDropOpt,
    MeanOpt,
    MinCosineOpt,
    MinProviderShareOpt,
    MinSqnrOpt,
    ReportOpt,
    SamplesOpt,
    SaveRecipeOpt,
    ShapeOpt,
    StdOpt,
    ThreadsOpt,
)


@command("validate")
def validate(
    ctx: typer.Context,
    fp32_model: Annotated[Path, typer.Argument(help="The FP32 original.", show_default=False)],
    quantized_model: Annotated[Path, typer.Argument(help="The quantized model.", show_default=False)],
    data: DataOpt,
    labels: LabelsOpt = None,
    samples: SamplesOpt = None,
    min_cosine: MinCosineOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    min_provider_share: MinProviderShareOpt = None,
    ep: EpOpt = "cpu",
    ep_option: EpOptionOpt = None,
    threads: ThreadsOpt = 1,
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
    """Measure a quantized model against its FP32 original on real data; exit 3 when a gate fails."""
    from qconvert import Gates, ValidateConfig
    from qconvert import validate as run_validate
    from qconvert.cli import render
    from qconvert.cli.app import conclude

    plan = options.report_plan(ctx, report)
    config = ValidateConfig(gates=Gates(min_cosine=min_cosine, max_drop=max_drop, min_sqnr=min_sqnr),
                            ep=options.ep_config(ep, ep_option, threads), min_provider_share=min_provider_share)
    data_config = options.data_from(ctx, data, samples=samples, labels=labels)
    result = run_validate(fp32_model, quantized_model, data_config, config=config)
    conclude(result, plan, lambda: render.validate_result(result, as_json=as_json))
