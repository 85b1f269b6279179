"""`qconvert quantize`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from qconvert.cli import options
from qconvert.cli.app import command
from qconvert.cli.options import (
    AllowNonfiniteOpt,
    CalibSamplesOpt,
    ContextOpt,
    EpsOpt,
    EpsOptionOpt,
    ForceOpt,
    ImageSizeOpt,
    JsonOpt,
    LabelsOpt,
    LayoutOpt,
    MaxDropOpt,
    MaxPplRatioOpt,
    MaxWindowsOpt,
    MeanOpt,
    MinCosineOpt,
    MinSpeedupOpt,
    MinSqnrOpt,
    MinTop1Opt,
    PromptsOpt,
    ReportOpt,
    RunsOpt,
    SaveRecipeOpt,
    ShapeOpt,
    StdOpt,
    StrideOpt,
    TextOpt,
    ThreadsOpt,
    TokenizerOpt,
    TokensOpt,
)
from qconvert.config import (
    MIX_BITS,
    ActivationType,
    CalibrationMethod,
    EPConfig,
    Executor,
    ExecutorConfig,
    Mode,
    QuantizeConfig,
    ScaleType,
    Sensitive,
    Target,
    WeightForm,
    WeightMethod,
    WeightOnlyConfig,
    WeightType,
    mixable,
)
from qconvert.errors import UsageError
from qconvert.presets import PRESETS, resolve


@command("quantize")
def quantize(
    ctx: typer.Context,
    model: Annotated[list[str], typer.Argument(
        help="ONNX model file; several, a folder or a quoted glob make a batch.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where to write the quantized model; for a batch a folder, or a name with {stem}.",
        show_default=False)],
    calib: Annotated[str | None, typer.Option(
        "--calib", help="Calibration data: .npz file or folder, .npy folder, ONNX test-data folder, image "
                        "folder, file.py:function, package.module:function, or 'synthetic'.",
        show_default=False)] = None,
    preset: Annotated[list[str] | None, typer.Option(
        "--preset", help=f"Start from a named configuration ({', '.join(PRESETS)}); repeatable: a target then a "
                         "family. Options given explicitly override it.", show_default=False)] = None,
    mode: Annotated[Mode | None, typer.Option(
        help="static (QDQ, needs --calib), dynamic, weight-only (block-wise 4/8-bit MatMul and embedding "
             "weights, float activations: language models), or qat (a QAT export's float weights stored as "
             "integers with the trained scales); default: qat for a QAT export, else static with --calib, "
             "else dynamic.",
        show_default=False)] = None,
    activations: Annotated[ActivationType, typer.Option(help="Activation type (static mode).")] = ActivationType.UINT8,
    weights: Annotated[WeightType, typer.Option(
        help="Weight type; weight-only mode: int4 (its default) or int8.")] = WeightType.INT8,
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
        "--subgraphs/--no-subgraphs", help="Quantize inside If/Loop/Scan bodies.",
        show_default="when present")] = None,
    preprocess: Annotated[bool, typer.Option(
        "--preprocess/--no-preprocess", help="Shape inference, constant folding, initializer fixes first.")] = True,
    fix_shape: Annotated[list[str] | None, typer.Option(
        "--fix-shape", help="Make an input static in the output, e.g. image=1,3,224,224 (NPU providers need "
                            "static shapes; repeatable).", show_default=False)] = None,
    target: Annotated[Target, typer.Option(
        help="Backend rules for static QDQ: generic, or qnn (onnxruntime's QNN helper overrides).")] = Target.GENERIC,
    sensitive: Annotated[Sensitive, typer.Option(
        help="Accuracy search: keep sensitive nodes in float, quantize them dynamically (CPU), or raise their "
             "activations to 16 bits (qnn target).",
        rich_help_panel="Accuracy search")] = Sensitive.FLOAT,
    smooth: Annotated[float | None, typer.Option(
        "--smooth", min=0.0, max=1.0, help="SmoothQuant: migrate activation outliers into MatMul weights with this "
                                           "strength alpha before static QDQ (0.5-0.8 for transformers).",
        show_default=False)] = None,
    float_outputs: Annotated[bool, typer.Option(
        "--float-outputs/--quantize-all-outputs",
        help="Static: a MatMul/Gemm whose output only float ops read writes float, with no Q/DQ pair on it "
             "(less rounding, same integer kernel); NPU presets quantize every output.")] = True,
    block_size: Annotated[int | None, typer.Option(
        "--block-size", help="Weight-only: weights per scale along the input dimension (16-256, a power of two).",
        show_default="32 for int4, 128 for int8", rich_help_panel="Weight-only")] = None,
    accuracy_level: Annotated[int, typer.Option(
        "--accuracy-level", min=0, max=4, help="Weight-only: MatMulNBits' compute type, 4 = int8 activations (the "
                                              "fast CPU kernel), 0 = onnxruntime's float default.",
        rich_help_panel="Weight-only")] = 4,
    weight_form: Annotated[WeightForm, typer.Option(
        "--weight-form", help="Weight-only: nbits (onnxruntime's MatMulNBits / GatherBlockQuantized) or qdq "
                              "(blocked int4 DequantizeLinear → MatMul, opset 21, for NPUs and other runtimes).",
        rich_help_panel="Weight-only")] = WeightForm.NBITS,
    scales: Annotated[ScaleType | None, typer.Option(
        "--scales", help="Weight-only: the block scales' float type; fp16 saves 2 bytes per block (0.5 bit per "
                         "int4 weight in blocks of 32), and the quantized MatMuls then take float16 activations "
                         "(those whose inputs near float16's range on the calibration text keep fp32).",
        show_default="fp16 with GPTQ, else fp32", rich_help_panel="Weight-only")] = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings/--no-embeddings", help="Weight-only: quantize embedding tables (Gather) too.",
        rich_help_panel="Weight-only")] = True,
    weight_method: Annotated[WeightMethod, typer.Option(
        "--weight-method", help="Weight-only: rtn (round to nearest) or gptq (error-compensating, reads "
                                "--calib-text).", show_default="gptq with --calib-text, else rtn",
        rich_help_panel="Weight-only")] = WeightMethod.RTN,
    act_order: Annotated[bool, typer.Option(
        "--act-order/--no-act-order", help="Weight-only GPTQ: solve rows from the most active input down, on "
                                           "block grids fixed beforehand (more accurate where a few inputs "
                                           "carry outliers).", rich_help_panel="Weight-only")] = True,
    calib_text: Annotated[Path | None, typer.Option(
        "--calib-text", help="Weight-only: calibration text for --weight-method gptq (tokenized with --tokenizer).",
        show_default=False, rich_help_panel="Weight-only")] = None,
    bits_per_weight: Annotated[float | None, typer.Option(
        "--bits-per-weight", min=0, help="Weight-only GPTQ, int4: raise to 8 bits the weights whose 4 bits leave "
                                         "the most output error per added byte, while the quantized weights average "
                                         "at most this many bits, scales included (4: none).",
        show_default=f"{MIX_BITS:g} with GPTQ", rich_help_panel="Weight-only")] = None,
    eight_bit: Annotated[list[str] | None, typer.Option(
        "--eight-bit", help="Weight-only: nodes whose name matches this glob get 8 bits in a 4-bit model "
                            "(repeatable).", show_default=False, rich_help_panel="Weight-only")] = None,
    calib_samples: CalibSamplesOpt = None,
    shape: ShapeOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: LayoutOpt = None,
    allow_nonfinite: AllowNonfiniteOpt = False,
    force: ForceOpt = False,
    validate_data: Annotated[str | None, typer.Option(
        "--validate", help="Then validate against FP32 on this data (read like --calib).",
        show_default=False, rich_help_panel="Then")] = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help="Accuracy search: measure against FP32 on this data (read like --calib) and keep the "
                            "most harmful nodes in float until --min-cosine / --max-drop / --min-sqnr is met.",
        show_default=False, rich_help_panel="Accuracy search")] = None,
    max_trials: Annotated[int, typer.Option(
        "--max-trials", min=1, help="Accuracy search: at most this many quantize-and-measure rounds.",
        rich_help_panel="Accuracy search")] = 12,
    eval_samples: Annotated[int | None, typer.Option(
        "--eval-samples", min=1, help="Accuracy search: use at most this many evaluation samples.",
        show_default=False, rich_help_panel="Accuracy search")] = None,
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
    min_cosine: MinCosineOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    then_benchmark: Annotated[bool, typer.Option(
        "--benchmark", help="Then time FP32 against the quantized model, interleaved.",
        rich_help_panel="Then")] = False,
    runs: RunsOpt = None,
    min_speedup: MinSpeedupOpt = None,
    then_analyze: Annotated[bool, typer.Option(
        "--analyze", help="Then rank the quantized nodes by their own error on the evaluation data.",
        rich_help_panel="Then")] = False,
    ep: EpsOpt = None,
    ep_option: EpsOptionOpt = None,
    threads: ThreadsOpt = 1,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, help="Batch: models quantized at once, each in its own worker process.")] = 1,
    executor: Annotated[Executor, typer.Option(
        "--executor", help="Batch: local worker processes, or tasks on a Dask cluster (the cluster extra).")
    ] = Executor.LOCAL,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Batch with --executor dask: the scheduler's address, e.g. tcp://10.0.0.5:8786; "
                            "default: DASK_SCHEDULER_ADDRESS, else a local cluster for the run.",
        show_default=False)] = None,
    report: ReportOpt = None,
    save_recipe: SaveRecipeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantize a model: static QDQ with calibration data, or dynamic; optionally validate, benchmark and
    analyze it against FP32 in the same run (exit 3 when a gate fails). Several models make a batch."""
    from qconvert import BenchmarkConfig, Gates, PipelineJob, SearchConfig, run_batch, run_job
    from qconvert.cli import render
    from qconvert.cli.app import conclude
    from qconvert.config import TextData
    from qconvert.report.writing import plan_reports
    from qconvert.workflows.batch import batch_jobs, expand_models

    if labels and validate_data is None and eval_data is None:
        raise UsageError("accuracy gates and --analyze need evaluation data",
                         hint="add --eval-data DATA or --validate DATA")
    if not then_benchmark and (runs is not None or min_speedup is not None):
        raise UsageError("--runs and --min-speedup need --benchmark")
    providers = options.ep_configs(ep, ep_option, threads)
    gates = Gates(min_cosine=min_cosine, max_drop=max_drop, min_sqnr=min_sqnr, max_ppl_ratio=max_ppl_ratio,
                  min_top1=min_top1)
    template = PipelineJob(
        model=Path(), output=output, config=_config(ctx, providers), force=force, gates=gates,
        analyze=then_analyze, providers=providers,
        calibration=options.data_from(ctx, calib, samples=calib_samples) if calib is not None else None,
        evaluation=options.data_from(ctx, validate_data, labels=labels) if validate_data is not None else None,
        search=SearchConfig(evaluation=options.data_from(ctx, eval_data, samples=eval_samples, labels=labels),
                            gates=gates, max_trials=max_trials) if eval_data is not None else None,
        benchmark=BenchmarkConfig(runs=runs, min_speedup=min_speedup) if then_benchmark else None,
        calibration_text=TextData(text=calib_text, tokenizer=tokenizer) if calib_text is not None else None,
        evaluation_text=options.text_from(ctx), language=options.language_from(ctx),
        text_trials=max_trials,
    )
    models, is_batch = expand_models(model)
    planned = batch_jobs(template, models, batch=is_batch)
    plan = None if report is None else plan_reports(report, planned, batch=is_batch,
                                                    besides=options.files_besides(ctx, "report"))
    cluster = ExecutorConfig(kind=executor, scheduler=scheduler)
    if executor is Executor.DASK and not is_batch:
        raise UsageError("--executor dask runs a batch on a cluster: give several models, a folder or a glob",
                         hint="one model runs here, without --executor")
    if is_batch:
        batch = run_batch(planned, workers=jobs, on_done=render.batch_item, executor=cluster)
        conclude(batch, plan, lambda: render.batch_result(batch, as_json=as_json))
    else:
        result = run_job(planned[0], on_trial=render.trial if eval_data else None)
        conclude(result, plan, lambda: render.pipeline_result(result, result.report(), as_json=as_json))


def _config(ctx: typer.Context, providers: tuple[EPConfig, ...]) -> QuantizeConfig:
    """The presets, then the options given explicitly (not their defaults), under the providers' rules."""
    from qconvert.cli import render

    given = {field: convert(ctx.params[param]) if convert else ctx.params[param]
             for field, (param, convert) in _CONFIG_FIELDS.items() if _given(ctx, param)}
    resolved = resolve(_split(ctx.params["preset"]), given, providers=providers)
    render.warnings(list(resolved.warnings))
    if ctx.params["preset"]:
        render.presets([PRESETS[name] for name in resolved.config.presets], list(resolved.explicit))
    return replace(resolved.config, weight_only=_weight_only(ctx, resolved.config.mode))


def _weight_only(ctx: typer.Context, mode: Mode | None) -> WeightOnlyConfig:
    """The weight-only options, refused unless the mode is weight-only; int4 unless --weights says int8,
    GPTQ when --calib-text is given and --weight-method is not."""
    p = ctx.params
    if mode is not Mode.WEIGHT_ONLY:
        stray = [f"--{name.replace('_', '-')}" for name in _WEIGHT_ONLY if _given(ctx, name)]
        if stray:
            raise UsageError(f"{', '.join(stray)}: weight-only options, given without --mode weight-only",
                             hint="add --mode weight-only")
        return WeightOnlyConfig()
    weights = WeightType(p["weights"])
    if _given(ctx, "weights") and weights not in (WeightType.INT4, WeightType.INT8):
        raise UsageError(f"weight-only mode writes int4 or int8 weights, not {weights}",
                         hint="use --weights int4 or --weights int8")
    bits = 8 if _given(ctx, "weights") and weights is WeightType.INT8 else 4
    method = WeightMethod(p["weight_method"]) if _given(ctx, "weight_method") or p["calib_text"] is None \
        else WeightMethod.GPTQ
    form = WeightForm(p["weight_form"])
    scales = ScaleType(p["scales"]) if p["scales"] is not None else (
        ScaleType.FP16 if method is WeightMethod.GPTQ and form is WeightForm.NBITS else ScaleType.FP32)
    return WeightOnlyConfig(
        bits=bits, block_size=p["block_size"], symmetric=p["symmetric_weights"],
        accuracy_level=p["accuracy_level"], form=form, scales=scales, embeddings=p["embeddings"],
        method=method, act_order=p["act_order"], eight_bit=tuple(p["eight_bit"] or ()),
        bits_per_weight=p["bits_per_weight"] if _given(ctx, "bits_per_weight")
        else MIX_BITS if mixable(bits, method, form) else None)


_WEIGHT_ONLY = ("block_size", "accuracy_level", "weight_form", "scales", "embeddings", "eight_bit", "weight_method",
                "act_order", "calib_text", "bits_per_weight")


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user set `param` (on the command line or from the environment), not its default."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name != "DEFAULT"


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


# QuantizeConfig field: (the CLI parameter that sets it, how its value in ctx.params (choices as their
# strings) becomes the field's)
_CONFIG_FIELDS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "mode": ("mode", Mode), "activations": ("activations", ActivationType), "weights": ("weights", WeightType),
    "per_channel": ("per_channel", None), "reduce_range": ("reduce_range", None),
    "symmetric_activations": ("symmetric_activations", None), "symmetric_weights": ("symmetric_weights", None),
    "method": ("method", CalibrationMethod), "percentile": ("percentile", None), "op_types": ("op_types", _split),
    "exclude_op_types": ("exclude_op_types", _split),
    "exclude_nodes": ("exclude_nodes", lambda v: tuple(v or ())), "subgraphs": ("subgraphs", None),
    "preprocess": ("preprocess", None),
    "fixed_shapes": ("fix_shape", lambda v: options.parse_shapes(v, "--fix-shape")),
    "target": ("target", Target), "sensitive": ("sensitive", Sensitive), "smooth": ("smooth", None),
    "float_outputs": ("float_outputs", None),
}
