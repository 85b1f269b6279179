"""`qconvert benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    EpOpt,
    EpOptionOpt,
    ImageSizeOpt,
    JsonOpt,
    LayoutOpt,
    MeanOpt,
    MinProviderShareOpt,
    MinSpeedupOpt,
    ReportOpt,
    RunsOpt,
    SaveRecipeOpt,
    ShapeOpt,
    SkipLabelsOpt,
    StdOpt,
    ThreadsOpt,
)


@command("benchmark")
def benchmark(
    ctx: typer.Context,
    models: Annotated[list[Path], typer.Argument(
        help="Models to time, interleaved; the first is the baseline for speedups.", show_default=False)],
    runs: RunsOpt = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Or: seconds of timed runs per model.", show_default=False)] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs per model first.")] = 5,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Samples per run.")] = 1,
    data: Annotated[str | None, typer.Option(
        "--data", help="Inputs from this data (read like --calib).",
        show_default="synthetic")] = None,
    labels: SkipLabelsOpt = None,
    lm: Annotated[bool, typer.Option(
        "--lm", help="Language models: time prefill of a prompt and decode tokens/s through the KV cache "
                     "(--runs rounds, default 5).", rich_help_panel="Language models")] = False,
    prompt_tokens: Annotated[int, typer.Option(
        "--prompt-tokens", min=1, help="--lm: prompt length.", rich_help_panel="Language models")] = 128,
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", min=1, help="--lm: tokens generated per round.", rich_help_panel="Language models")] = 64,
    min_speedup: MinSpeedupOpt = None,
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
    """Time models side by side (A B A B …) on a provider (language models with --lm: prefill and decode
    tokens/s); exit 3 when a gate fails."""
    from qconvert import BenchmarkConfig
    from qconvert import benchmark as run_benchmark
    from qconvert.cli import render
    from qconvert.cli.app import conclude
    from qconvert.config import DecodeConfig
    from qconvert.errors import UsageError

    plan = options.report_plan(ctx, report)
    decode = DecodeConfig(prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=runs or 5) if lm else None
    if lm and (duration is not None or data is not None):
        raise UsageError("--lm times generation from a prompt: --duration and --data do not apply")
    config = BenchmarkConfig(runs=None if lm else runs, duration=duration, warmup=warmup, batch=batch,
                             min_speedup=min_speedup, min_provider_share=min_provider_share,
                             ep=options.ep_config(ep, ep_option, threads), decode=decode)
    data_config = options.data_from(ctx, data or "synthetic", labels=labels)
    result = run_benchmark(list(models), data_config, config=config)
    conclude(result, plan, lambda: render.benchmark_result(result, as_json=as_json))
