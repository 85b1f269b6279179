"""`qconvert validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    ContextOpt,
    EpOpt,
    EpOptionOpt,
    EvalDataOpt,
    ImageSizeOpt,
    JsonOpt,
    LabelsOpt,
    LayoutOpt,
    MaxDropOpt,
    MaxPplRatioOpt,
    MaxWindowsOpt,
    MeanOpt,
    MinCosineOpt,
    MinProviderShareOpt,
    MinSqnrOpt,
    MinTop1Opt,
    PromptsOpt,
    ReportOpt,
    SamplesOpt,
    SaveRecipeOpt,
    ShapeOpt,
    StdOpt,
    StrideOpt,
    TextOpt,
    ThreadsOpt,
    TokenizerOpt,
    TokensOpt,
)


@command("validate")
def validate(
    ctx: typer.Context,
    fp32_model: Annotated[Path, typer.Argument(help="The FP32 original.", show_default=False)],
    quantized_model: Annotated[Path, typer.Argument(help="The quantized model.", show_default=False)],
    data: EvalDataOpt = None,
    text: TextOpt = None,
    tokenizer: TokenizerOpt = None,
    tokens: TokensOpt = None,
    context: ContextOpt = 256,
    stride: StrideOpt = None,
    max_windows: MaxWindowsOpt = None,
    prompts: PromptsOpt = 4,
    max_ppl_ratio: MaxPplRatioOpt = None,
    min_top1: MinTop1Opt = None,
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
    """Measure a quantized model against its FP32 original on real data (a language model on text:
    perplexity, KL divergence, next-token and generation agreement); exit 3 when a gate fails."""
    from qconvert import Gates, ValidateConfig
    from qconvert import validate as run_validate
    from qconvert.cli import render
    from qconvert.cli.app import conclude
    from qconvert.errors import UsageError

    plan = options.report_plan(ctx, report)
    gates = Gates(min_cosine=min_cosine, max_drop=max_drop, min_sqnr=min_sqnr, max_ppl_ratio=max_ppl_ratio,
                  min_top1=min_top1)
    config = ValidateConfig(gates=gates, ep=options.ep_config(ep, ep_option, threads),
                            min_provider_share=min_provider_share, language=options.language_from(ctx))
    text_data = options.text_from(ctx)
    if (data is None) == (text_data is None):
        raise UsageError("give --data DATA, or for a language model --text FILE (or --tokens FILE.npy)"
                         if data is None else "--data and --text/--tokens are two kinds of validation: give one",
                         hint="qconvert validate FP32 QUANT --text eval.txt --tokenizer tokenizer.json")
    source = options.data_from(ctx, data, samples=samples, labels=labels) if data is not None else text_data
    assert source is not None
    result = run_validate(fp32_model, quantized_model, source, config=config)
    conclude(result, plan, lambda: render.validate_result(result, as_json=as_json))
