"""Shared option types and parsers for the commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qconvert.config import DataConfig, EPConfig, LanguageConfig, Layout, TextData, alias
from qconvert.errors import UsageError

if TYPE_CHECKING:
    from qconvert.report.writing import ReportPlan

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
LayoutOpt = Annotated[Layout | None, typer.Option(help="Image folders: tensor layout.",
                                                  show_default="from the model")]
EpOpt = Annotated[str, typer.Option(
    "--ep", help="Execution provider: cpu, openvino, qnn, vitisai, dml, coreml, … (see `qconvert providers`).")]
EpOptionOpt = Annotated[list[str] | None, typer.Option(
    "--ep-option", help="Provider option KEY=VALUE, e.g. device_type=NPU (repeatable).", show_default=False)]
EpsOpt = Annotated[list[str] | None, typer.Option(
    "--ep", help="Validate and benchmark on this execution provider: cpu, openvino, qnn, … (repeatable: each in "
                 "turn).", show_default="cpu")]
EpsOptionOpt = Annotated[list[str] | None, typer.Option(
    "--ep-option", help="Provider option KEY=VALUE for every --ep, or PROVIDER:KEY=VALUE for one (repeatable).",
    show_default=False)]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads (1 is the reproducible choice).")]
LabelsOpt = Annotated[str | None, typer.Option(
    "--labels", help="Key of the class labels stored beside the inputs (npz): adds top-1 accuracy of both.",
    show_default=False)]
SkipLabelsOpt = Annotated[str | None, typer.Option(
    "--labels", help="Key of class labels stored beside the inputs (npz), skipped: only the inputs are used.",
    show_default=False)]
AllowNonfiniteOpt = Annotated[bool, typer.Option(
    "--allow-nonfinite", help="Accept NaN/Inf in the data instead of refusing the sample.")]
MinCosineOpt = Annotated[float | None, typer.Option(
    "--min-cosine", help="Gate: mean cosine similarity to FP32, every output.", show_default=False)]
MaxDropOpt = Annotated[float | None, typer.Option(
    "--max-drop", help="Gate: top-1 accuracy drop in points (needs --labels).", show_default=False)]
MinSqnrOpt = Annotated[float | None, typer.Option(
    "--min-sqnr", help="Gate: signal-to-quantization-noise ratio in dB, every output.", show_default=False)]
DataOpt = Annotated[str, typer.Option(
    "--data", help="Evaluation data, read like --calib: .npz file or folder, .npy folder, ONNX test data, "
                   "images, or a plugin.", show_default=False)]
EvalDataOpt = Annotated[str | None, typer.Option(
    "--data", help="Evaluation data, read like --calib: .npz file or folder, .npy folder, ONNX test data, "
                   "images, or a plugin (a language model: --text instead).", show_default=False)]
TextOpt = Annotated[Path | None, typer.Option(
    "--text", help="Language models: evaluation text (UTF-8), tokenized with --tokenizer.", show_default=False,
    rich_help_panel="Language models")]
TokenizerOpt = Annotated[Path | None, typer.Option(
    "--tokenizer", help="Language models: the model's tokenizer.json (Hugging Face tokenizers).",
    show_default="tokenizer.json beside the FP32 model", rich_help_panel="Language models")]
TokensOpt = Annotated[Path | None, typer.Option(
    "--tokens", help="Language models: evaluation token ids (.npy, 1-D, or 2-D rows joined) instead of --text.",
    show_default=False, rich_help_panel="Language models")]
ContextOpt = Annotated[int, typer.Option(
    "--context", min=2, help="Language models: tokens per perplexity window.", rich_help_panel="Language models")]
StrideOpt = Annotated[int | None, typer.Option(
    "--stride", min=1, help="Language models: tokens between window starts (less than --context: overlapping "
                            "windows, every scored token with more history).",
    show_default="--context", rich_help_panel="Language models")]
MaxWindowsOpt = Annotated[int | None, typer.Option(
    "--max-windows", min=1, help="Language models: score at most this many windows.", show_default=False,
    rich_help_panel="Language models")]
PromptsOpt = Annotated[int, typer.Option(
    "--prompts", min=0, help="Language models: greedy generations compared, from prompts taken over the text.",
    rich_help_panel="Language models")]
MaxPplRatioOpt = Annotated[float | None, typer.Option(
    "--max-ppl-ratio", help="Gate: perplexity over FP32's on the text (e.g. 1.05).", show_default=False,
    rich_help_panel="Language models")]
MinTop1Opt = Annotated[float | None, typer.Option(
    "--min-top1", help="Gate: share of positions whose next-token argmax agrees with FP32's (e.g. 0.9).",
    show_default=False, rich_help_panel="Language models")]
SamplesOpt = Annotated[int | None, typer.Option(
    "--samples", min=1, help="Use at most this many evaluation samples.", show_default=False)]
RunsOpt = Annotated[int | None, typer.Option(
    "--runs", min=1, help="Timed runs per model.", show_default="100")]
ReportOpt = Annotated[Path | None, typer.Option(
    "--report", help="Also write the result (all steps) to this file: HTML when it ends in .html, else JSON.",
    show_default=False)]
SaveRecipeOpt = Annotated[Path | None, typer.Option(
    "--save-recipe", help="Also write this command as a recipe file (TOML) that `qconvert run` replays.",
    show_default=False)]
MinSpeedupOpt = Annotated[float | None, typer.Option(
    "--min-speedup", help="Gate: every model after the first must be this many times faster.",
    show_default=False)]
MinProviderShareOpt = Annotated[float | None, typer.Option(
    "--min-provider-share", min=0.0, max=1.0,
    help="Gate: the provider (--ep) must run at least this share of the model's nodes, e.g. 0.9.",
    show_default=False)]


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


def parse_shapes(items: list[str] | None, flag: str = "--shape") -> tuple[tuple[str, tuple[int, ...]], ...]:
    shapes = []
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {item!r}: expected NAME=D0,D1,…", hint=f"e.g. {flag} image=1,3,224,224")
        shapes.append((name, parse_ints(dims, f"{flag} {name}")))
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


def ep_config(provider: str, items: list[str] | None, threads: int) -> EPConfig:
    """The EPConfig behind --ep, --ep-option KEY=VALUE (repeatable) and --threads."""
    return ep_configs([provider], items, threads)[0]


def ep_configs(providers: list[str] | None, items: list[str] | None, threads: int) -> tuple[EPConfig, ...]:
    """One EPConfig per --ep (default: cpu). An --ep-option applies to every provider, or, written
    PROVIDER:KEY=VALUE, to that one only."""
    names = list(dict.fromkeys(providers or ["cpu"]))
    options: dict[str, list[tuple[str, str]]] = {alias(name): [] for name in names}
    for item in items or []:
        key, sep, value = item.partition("=")
        scope, colon, key = key.rpartition(":") if ":" in key else ("", "", key)
        if not sep or not key.strip() or (colon and not scope.strip()):
            raise UsageError(f"--ep-option {item!r}: expected KEY=VALUE or PROVIDER:KEY=VALUE",
                             hint="e.g. --ep-option device_type=CPU or --ep-option openvino:device_type=NPU")
        if scope and alias(scope) not in options:
            raise UsageError(f"--ep-option {item!r} names the provider {scope!r}, which no --ep gives",
                             hint=f"providers in this run: {', '.join(names)}")
        for name, found in options.items():
            if not scope or alias(scope) == name:
                found.append((key.strip(), value.strip()))
    return tuple(EPConfig(provider=name, options=tuple(options[alias(name)]), threads=threads) for name in names)


def data_config(source: str, *, samples: int | None, shape: list[str] | None, image_size: str | None,
                mean: str, std: str, layout: Layout | None, labels: str | None = None,
                allow_nonfinite: bool = False) -> DataConfig:
    """The DataConfig behind every command that reads samples (--calib, --data)."""
    return DataConfig(source=source, max_samples=samples, shapes=parse_shapes(shape),
                      image_size=parse_image_size(image_size), mean=parse_floats(mean, "--mean"),
                      std=parse_floats(std, "--std"), layout=layout, labels=labels,
                      allow_nonfinite=allow_nonfinite)


def data_from(ctx: typer.Context, source: str, *, samples: int | None = None,
              labels: str | None = None) -> DataConfig:
    """The DataConfig behind --calib, --data, --validate or --eval-data, with the command's shared data
    options (--shape, --image-size, --mean, --std, --layout, --allow-nonfinite). Synthetic data for a
    model made static (--fix-shape) takes the fixed shapes unless --shape says otherwise."""
    p = ctx.params  # choices arrive as their strings here
    return data_config(source, samples=samples, shape=p["shape"] or p.get("fix_shape"), image_size=p["image_size"],
                       mean=p["mean"], std=p["std"], layout=Layout(p["layout"]) if p["layout"] else None,
                       labels=labels, allow_nonfinite=p["allow_nonfinite"])


def language_from(ctx: typer.Context) -> LanguageConfig:
    """How --text is read: --context, --stride, --max-windows, --prompts."""
    p = ctx.params
    return LanguageConfig(context=p["context"], stride=p["stride"], max_windows=p["max_windows"], prompts=p["prompts"])


def text_from(ctx: typer.Context) -> TextData | None:
    """The evaluation text of --text (with --tokenizer) or --tokens; None when neither is given."""
    p = ctx.params
    if p["text"] is None and p["tokens"] is None:
        return None
    def path(name: str) -> Path | None:  # ctx.params holds what was typed
        return None if p[name] is None else Path(p[name])

    return TextData(text=path("text"), tokenizer=path("tokenizer"), tokens=path("tokens"))


_WRITTEN = ("output", "report", "save_recipe")  # parameters naming files the command writes


def report_plan(ctx: typer.Context, report: Path | None) -> ReportPlan | None:
    """Where the command's --report goes, checked before any work (never a file the run reads or writes)."""
    from qconvert.report.writing import plan_reports

    return None if report is None else plan_reports(report, (), batch=False, besides=files_besides(ctx, "report"))


def files_besides(ctx: typer.Context, param: str) -> tuple[Path, ...]:
    """The files the command `ctx` reads or writes, other than the one `param` names: every other
    parameter value that names an existing path, and the files it will write. A report or recipe
    must be none of them."""
    found: list[Path] = []
    for name, value in ctx.params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if name != param and isinstance(v, str | Path) and (name in _WRITTEN or os.path.lexists(v)):
                found.append(Path(v))
    return tuple(found)
