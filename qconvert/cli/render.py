"""All terminal output: Rich tables for people, plain JSON for programs.

Results go to stdout; progress, warnings and errors to stderr.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.table import Table

from qconvert import progress
from qconvert.config import Mode
from qconvert.errors import GateFailedError, QconvertError
from qconvert.results import (
    SCHEMA_VERSION,
    AnalyzeResult,
    BenchmarkResult,
    ConvertResult,
    Gate,
    InspectResult,
    LanguageComparison,
    QuantizeResult,
    SkippedNode,
    ValidateResult,
    human_bytes,
    number,
)

if TYPE_CHECKING:
    from rich.progress import TaskID

    from qconvert.presets import Preset
    from qconvert.providers import ProviderInfo
    from qconvert.results import (
        BatchItem,
        BatchResult,
        PipelineResult,
        Placement,
        SearchResult,
        Trial,
        WeightSearchResult,
    )

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_quiet: ContextVar[bool] = ContextVar("qconvert_quiet", default=False)


def visible(text: str) -> str:
    """Text from a model, a data file or onnxruntime with its control and format characters shown as
    escapes (\\x1b, \\u202e): no escape sequence, bell or direction override reaches the terminal."""
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)


def escape(text: str) -> str:
    """Untrusted text for a Rich string: visible control characters, and never read as markup."""
    return _escape_markup(visible(text))


@contextmanager
def stderr_display(*, quiet: bool) -> Iterator[None]:
    """What a command shows on stderr besides errors, while it runs: progress bars (on a terminal),
    warnings, notes and progress lines; with `quiet`, none of them. A command run by a quiet one
    (`qconvert -q run RECIPE`) is quiet too."""
    token = _quiet.set(quiet or _quiet.get())
    try:
        with progress_bars(enabled=not _quiet.get()):
            yield
    finally:
        _quiet.reset(token)


@contextmanager
def progress_bars(*, enabled: bool = True) -> Iterator[None]:
    """Rich bars on stderr for the library's tasks run inside (`qconvert.progress`), when `enabled`
    and stderr is a terminal; otherwise those tasks report to nobody."""
    if not (enabled and err.is_terminal):
        with progress.reporting(None):
            yield
        return
    bars = _Bars()
    try:
        with progress.reporting(bars):
            yield
    finally:
        bars.close()


class _Bars:
    """A `progress.Reporter`: one transient bar per running task. The display is up only while a task
    runs, so results printed between tasks never meet it; lines printed on `err` meanwhile (trials,
    batch models) appear above it. Bars are redrawn from the library's own thread, at most every
    REDRAW_SECONDS, between its steps: no refresh thread runs beside a benchmark's timed calls."""

    REDRAW_SECONDS = 0.2

    def __init__(self) -> None:
        # Imported only when bars are drawn: every command, --help included, imports this module.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=True, auto_refresh=False,
                                 redirect_stdout=False, redirect_stderr=False)  # stdout stays the results'
        self._running = 0
        self._drawn = 0.0

    def start(self, description: str, total: int | None) -> object:
        if not self._running:
            self._display.start()
        self._running += 1
        handle = self._display.add_task(description, total=total)
        self._display.refresh()
        return handle

    def advance(self, handle: object, steps: int) -> None:
        self._display.advance(cast("TaskID", handle), steps)
        now = time.monotonic()
        if now - self._drawn >= self.REDRAW_SECONDS:
            self._drawn = now
            self._display.refresh()

    def finish(self, handle: object) -> None:
        self._display.remove_task(cast("TaskID", handle))
        self._running -= 1
        if not self._running:
            self._display.stop()

    def close(self) -> None:
        self._display.stop()


def print_json(payload: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(exc: QconvertError, *, as_json: bool) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
    for line in exc.details:
        err.print(f"  - {visible(line)}", highlight=False, markup=False)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)
    if as_json and not isinstance(exc, GateFailedError):  # a gate's result JSON is already on stdout
        print_json({"schema_version": SCHEMA_VERSION, "command": "error", **exc.to_dict()})


def internal_error(exc: BaseException) -> None:
    err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
    err.print("this is a bug in qconvert; re-run with --debug for the traceback", highlight=False)


def interrupted() -> None:
    err.print("[yellow]interrupted[/]")


def warnings(items: list[str]) -> None:
    if _quiet.get():
        return
    for w in items:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


def inspect_result(r: InspectResult) -> None:
    out.print(f"[bold]{escape(r.path)}[/]", highlight=False)
    opsets = ", ".join(f"{k} {v}" for k, v in r.opsets.items())
    out.print(f"IR {r.ir_version} · opsets {opsets} · producer {escape(r.producer or 'unknown')}", highlight=False)
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, specs in (("input", r.inputs), ("output", r.outputs)):
        for s in specs:
            shape = s["shape"]
            dims = "?" if shape is None else "[" + ", ".join(
                str(x if x is not None else "?") for x in shape) + "]"  # type: ignore[attr-defined]
            io.add_row(kind, escape(str(s["name"])), str(s["dtype"]), escape(dims))
    out.print(io)
    ops = Table(title=f"{r.nodes} nodes ({r.subgraph_nodes} in subgraphs)", title_justify="left")
    for col in ("op type", "count", "static candidates", "dynamic candidates"):
        ops.add_column(col, justify="right" if col != "op type" else "left")
    for op, n in r.op_types.items():
        ops.add_row(escape(op), str(n), str(r.candidates["static"].get(op, "")),
                    str(r.candidates["dynamic"].get(op, "")))
    out.print(ops)
    params = ", ".join(f"{k}: {v['count']:,} ({human_bytes(v['bytes'])})" for k, v in r.parameters.items())
    out.print(f"parameters: {r.parameter_count:,} · {params or 'none'}", highlight=False)
    out.print(f"file: {human_bytes(r.file_bytes)} · external data: {'yes' if r.external_data else 'no'}",
              highlight=False)
    fmt = r.quantized_format
    out.print(f"already quantized: {'[yellow]yes (' + fmt + ')[/]' if fmt else 'no'}", highlight=False)
    if r.qat is not None:
        q = r.qat
        bits = "/".join(str(b) for b in q["bits"]) or "?"  # type: ignore[attr-defined]
        out.print(f"QAT export: {q['float_weights']} weights stored float behind Q/DQ ({bits}-bit, {q['foldable']} "
                  f"foldable), {q['activation_pairs']} activation Q/DQ pairs: `qconvert quantize` folds them with the "
                  "trained scales", highlight=False)
    if r.decoder is not None:
        d = r.decoder
        cache = (f"KV cache of {d['num_layers']} layers, {d['kv_heads']} KV heads of {d['head_size']}"
                 + (f", {d['query_heads']} query heads (grouped)" if d.get("grouped") else "")
                 if d["kv_cache"] else "no KV cache")
        out.print(f"decoder: vocabulary {d['vocab'] or '?'} · {cache}", highlight=False)
    if r.bytes_by_role:
        total = sum(r.bytes_by_role.values()) or 1
        out.print("weights: " + " · ".join(f"{role} {human_bytes(n)} ({100 * n / total:.0f} %)"
                                           for role, n in r.bytes_by_role.items() if n), highlight=False)
    for reason, n in r.slow_nodes.items():
        out.print(f"[yellow]slow path:[/] {n} MatMulNBits node(s): {escape(reason)}", highlight=False)


def quantize_result(r: QuantizeResult) -> None:
    out.print(f"[bold]{escape(r.input_path)}[/] → [bold]{escape(r.output_path)}[/]", highlight=False)
    smoke = " [yellow](synthetic data: smoke run, not a real calibration)[/]" if r.smoke_run else ""
    out.print(f"mode: [bold]{r.mode}[/] ({r.mode_reason}){smoke}", highlight=False)
    table = Table(title=f"{r.quantized_nodes} of {r.candidate_nodes} candidate nodes quantized", title_justify="left")
    table.add_column("op type")
    table.add_column("quantized", justify="right")
    table.add_column("candidates", justify="right")
    for op, c in sorted(r.op_types.items(), key=lambda kv: (-kv[1].candidates, kv[0])):
        table.add_row(escape(op), str(c.quantized), str(c.candidates))
    out.print(table)
    if r.skipped:
        _reasons_table(f"{len(r.skipped)} candidate nodes left in float", r.skipped)
    if r.weights:
        _weight_table(r)
    out.print(f"size: {human_bytes(r.bytes_before)} → {human_bytes(r.bytes_after)} "
              f"([bold]{r.size_ratio:.2f}×[/] smaller)", highlight=False)
    if r.copied:
        out.print("model folder: " + escape(", ".join(r.copied)) + " written beside the output", highlight=False)
    out.print(f"time: prepare {r.prepare_seconds:.2f} s · calibration {r.calibration_seconds:.2f} s "
              f"({r.calibration_samples} samples) · quantization {r.quantization_seconds:.2f} s", highlight=False)
    if r.check is not None:
        out.print(f"check: worst cosine to FP32 {_fmt(r.check.worst_cosine)} ({escape(r.check.output)}) on "
                  f"{r.check.samples} calibration samples", highlight=False)
    cfg = r.config
    if r.mode is Mode.WEIGHT_ONLY:  # the static/dynamic options do not apply
        cfg = {"mode": r.mode.value, **(cfg.get("weight_only") or {}),  # type: ignore[dict-item]
               "exclude_nodes": cfg.get("exclude_nodes")}
    elif r.mode is Mode.QAT:  # nothing is calibrated or chosen: training chose it
        cfg = {"mode": r.mode.value, "fixed_shapes": cfg.get("fixed_shapes") or None}
    shown = {k: f"[{len(v)} names]" if isinstance(v, list) and len(v) > 3 else v for k, v in cfg.items()}
    out.print("config: " + escape(" ".join(f"{k}={v}" for k, v in shown.items() if v not in ((), [], None))),
              highlight=False)
    warnings(r.warnings)


def _reasons_table(title: str, nodes: list[SkippedNode]) -> None:
    """Nodes grouped by reason, with a few names each."""
    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("nodes", justify="right")
    table.add_column("examples")
    for reason, n in Counter(s.reason for s in nodes).most_common():
        names = [s.name for s in nodes if s.reason == reason]
        more = " …" if len(names) > 3 else ""
        table.add_row(escape(reason), str(n), escape(", ".join(names[:3]) + more))
    out.print(table)


def convert_result(r: ConvertResult) -> None:
    out.print(f"[bold]{escape(r.input_path)}[/] → [bold]{escape(r.output_path)}[/]", highlight=False)
    to = str(r.config["to"])
    out.print(f"{r.converted_nodes} of {r.float_nodes} float nodes in [bold]{to}[/], {len(r.kept)} kept in float32 · "
              f"inputs and outputs {r.config['io_types']}", highlight=False)
    if r.kept:
        _reasons_table(f"{len(r.kept)} nodes kept in float32", r.kept)
    ranges = (f"activation ranges checked on {r.calibration_samples} samples" if r.calibration_samples
              else "no activation range checked")
    out.print(f"size: {human_bytes(r.bytes_before)} → {human_bytes(r.bytes_after)} ([bold]{r.size_ratio:.2f}×[/] "
              f"smaller) · opset {r.opset_before}" + (f" → {r.opset_after}" if r.opset_after != r.opset_before else "")
              + f" · {ranges} · {r.seconds:.2f} s", highlight=False)
    if r.check is not None:
        out.print(f"check: worst cosine to FP32 {_fmt(r.check.worst_cosine, '.6f')} ({escape(r.check.output)}) on "
                  f"{r.check.samples} calibration samples", highlight=False)
    if r.cpu_casts:
        out.print(f"[yellow]CPU provider:[/] {r.cpu_casts} of {r.converted_nodes} converted nodes have no {to} kernel "
                  "there and run in float32 between inserted casts: expect it no faster than FP32 on the CPU",
                  highlight=False)
    warnings(r.warnings)


def _weight_table(r: QuantizeResult) -> None:
    """Weights per role and width: where the bytes went (a float embedding or lm_head shows here)."""
    rows: dict[tuple[str, str], list[int]] = {}
    for w in r.weights:
        width = "float" if w.bits is None else f"{w.bits}-bit" + (" (tied)" if w.tied_to and not w.stored_bytes else "")
        row = rows.setdefault((w.role, width), [0, 0, 0])
        row[0] += 1
        row[1] += w.params
        row[2] += w.stored_bytes
    table = Table(title="weights by role", title_justify="left")
    for column in ("role", "width", "nodes", "parameters", "stored"):
        table.add_column(column, justify="left" if column in ("role", "width") else "right")
    for (role, width), (nodes, params, stored) in sorted(rows.items()):
        table.add_row(role, width, str(nodes), f"{params:,}", human_bytes(stored))
    out.print(table)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    shown = number(value, 9)
    if shown is None:
        return "—" if value is None else str(value)
    return format(shown, spec)


def gates(items: list[Gate]) -> None:
    for g in items:
        mark = "[green]pass[/]" if g.passed else "[bold red]FAIL[/]"
        out.print(f"gate {mark} {escape(g.describe())}", highlight=False)


def validate_result(r: ValidateResult, *, as_json: bool) -> None:
    if as_json:
        print_json(r.to_dict())
    else:
        _validate_text(r)
    warnings(r.warnings)
    fallback_warnings([(r.quantized_path, r.placement)])


def _validate_text(r: ValidateResult) -> None:
    if r.language is not None:
        _validate_language(r, r.language)
        return
    out.print(f"[bold]{escape(r.quantized_path)}[/] vs FP32 [bold]{escape(r.fp32_path)}[/] on {r.samples} samples"
              f" ({escape(str(r.data.get('source')))}) · provider {escape(r.ep.provider)}",
              highlight=False)
    table = Table(title="outputs vs FP32 (cosine worst: value@sample)", title_justify="left")
    for column in ("output", "cosine", "worst", "max err", "mean err", "MSE", "SQNR dB", "top-1 =", ):
        table.add_column(column, justify="left" if column == "output" else "right")
    for o in r.outputs:
        sqnr = "identical" if o.sqnr_db == float("inf") else _fmt(o.sqnr_db, ".1f")
        agree = "—" if o.top1_agreement is None else f"{o.top1_agreement * 100:.1f}%"
        table.add_row(escape(o.name), _fmt(o.mean_cosine), f"{_fmt(o.worst_cosine)}@{o.worst_sample}",
                      _fmt(o.max_abs_error, ".3g"), _fmt(o.mean_abs_error, ".3g"), _fmt(o.mse, ".3g"), sqnr, agree)
        if o.non_finite:
            err.print(f"[bold red]{o.non_finite} NaN/Inf value(s) in quantized output {escape(o.name)}[/]")
    out.print(table)
    if r.fp32_accuracy is not None and r.quantized_accuracy is not None and r.accuracy_drop is not None:
        out.print(f"top-1 accuracy: FP32 {r.fp32_accuracy * 100:.2f}% · quantized {r.quantized_accuracy * 100:.2f}%"
                  f" · drop [bold]{r.accuracy_drop:.2f}[/] points", highlight=False)
    if r.placement is not None:
        out.print(f"on {escape(r.placement.provider)}: {_placement_cell(r.placement)} of the quantized model's nodes, "
                  f"{r.placement.quantized_on_provider}/{r.placement.quantized_nodes} quantized ones", highlight=False)
    gates(r.gates)


def _validate_language(r: ValidateResult, lm: LanguageComparison) -> None:
    source = r.data.get("text") or r.data.get("tokens")
    out.print(f"[bold]{escape(r.quantized_path)}[/] vs FP32 [bold]{escape(r.fp32_path)}[/] on {lm.tokens:,} tokens "
              f"of {escape(str(source))} ({lm.windows} windows of {lm.config.context}, stride {lm.config.step}) · "
              f"provider {escape(r.ep.provider)}", highlight=False)
    table = Table(title="language model vs FP32", title_justify="left")
    for column in ("FP32 PPL", "PPL", "ratio", "KL nats", "top-1 =", "generation ="):
        table.add_column(column, justify="right")
    generation = "—" if lm.generation_agreement is None else (
        f"{lm.generation_agreement * 100:.1f}% ({lm.identical_generations}/{lm.prompts} identical)")
    table.add_row(_fmt(lm.reference_perplexity, ".3f"), _fmt(lm.candidate_perplexity, ".3f"),
                  f"[bold]{_fmt(lm.perplexity_ratio, '.4f')}×[/]", _fmt(lm.kl_divergence, ".4g"),
                  f"{lm.top1_agreement * 100:.1f}%", generation)
    out.print(table)
    if r.placement is not None:
        out.print(f"on {escape(r.placement.provider)}: {_placement_cell(r.placement)} of the quantized model's nodes",
                  highlight=False)
    gates(r.gates)


def _db(value: float | None) -> str:
    if value is None:
        return "—"
    return "exact" if value == float("inf") else _fmt(value, ".1f")


def analyze_result(r: AnalyzeResult, *, as_json: bool, top: int) -> None:
    if as_json:
        print_json(r.to_dict())
        return
    out.print(f"[bold]{escape(r.quantized_path)}[/] vs FP32 [bold]{escape(r.fp32_path)}[/] ({escape(r.reference)})"
              f" on {r.samples} samples: {r.quantized_tensors} quantized tensors, {r.matched_tensors} tensors matched",
              highlight=False)
    shown = min(top, len(r.nodes))
    table = Table(title=f"nodes by the error they add on their own (own: from FP32 inputs; total: in the "
                        f"quantized model; upstream: share of the total noise carried in), worst first "
                        f"({shown} of {r.ranked_nodes})", title_justify="left")
    for column in ("#", "node", "op", "own dB", "own cos", "total dB", "upstream", "weight dB"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right",
                         overflow="fold", no_wrap=column not in ("node", "op"))
    for rank, n in enumerate(r.nodes[:top], 1):
        table.add_row(str(rank), escape(n.node), escape(n.op_type), _db(n.own_sqnr_db), _fmt(n.own_cosine, ".5f"),
                      _db(n.total_sqnr_db), f"{n.carried_share * 100:.0f}%", _db(n.weight_sqnr_db))
    out.print(table)
    tensors = Table(title="quantized tensors, dequantized vs FP32, worst first", title_justify="left")
    for column in ("tensor", "kind", "SQNR dB", "cosine"):
        tensors.add_column(column, justify="left" if column in ("tensor", "kind") else "right", overflow="fold")
    for t in r.tensors[:top]:
        tensors.add_row(escape(t.name), t.kind, _db(t.sqnr_db), _fmt(t.cosine, ".5f"))
    out.print(tensors)


def benchmark_result(r: BenchmarkResult, *, as_json: bool) -> None:
    if as_json:
        print_json(r.to_dict())
    elif r.decoding:
        _decoding_table(r)
        gates(r.gates)
    else:
        cfg = r.config
        fed = f"; inputs: {escape(r.inputs)}" if r.inputs else ""
        table = Table(title=f"latency on {escape(r.provider)} (ms per batch of {cfg.batch}, "
                            f"interleaved, {r.models[0].runs} runs each{fed})", title_justify="left")
        placed = any(m.placement is not None for m in r.models)
        columns = ["model", "mean", "p50", "p90", "p99", "min", "per s", "speedup"]
        columns += ["on provider"] if placed else []
        for column in columns:
            table.add_column(column, justify="left" if column == "model" else "right")
        for m in r.models:
            row = [escape(Path(m.path).name), f"{m.mean_ms:.3f}", f"{m.p50_ms:.3f}", f"{m.p90_ms:.3f}",
                   f"{m.p99_ms:.3f}", f"{m.min_ms:.3f}", f"{m.throughput:.0f}", f"{m.speedup:.2f}×"]
            if placed:
                row.append("—" if m.placement is None else _placement_cell(m.placement))
            table.add_row(*row)
        out.print(table)
        gates(r.gates)
    fallback_warnings([(m.path, m.placement) for m in r.models])
    warnings(r.warnings)


def _decoding_table(r: BenchmarkResult) -> None:
    first = r.decoding[0]
    table = Table(title=f"generation on {escape(r.provider)} ({first.prompt_tokens}-token prompt, then "
                        f"{first.new_tokens} tokens one by one; medians of {first.rounds} interleaved rounds)",
                  title_justify="left")
    for column in ("model", "prefill ms", "prefill ×", "decode tokens/s", "decode ×", "memory"):
        table.add_column(column, justify="left" if column == "model" else "right")
    names = [Path(d.path).name for d in r.decoding]
    if len(set(names)) < len(names):  # model folders: model.onnx each
        names = ["/".join(Path(d.path).parts[-2:]) for d in r.decoding]
    for d, name in zip(r.decoding, names, strict=True):
        memory = "—" if d.rss_growth_bytes is None else human_bytes(d.rss_growth_bytes)
        table.add_row(escape(name), f"{d.prefill_ms:.2f}", f"{d.prefill_speedup:.2f}×",
                      f"{d.decode_tokens_per_s:.1f}", f"[bold]{d.decode_speedup:.2f}×[/]", memory)
    out.print(table)
    out.print("memory: resident-set growth while the model loads and runs its first round", style="dim",
              highlight=False)


def replaying(argv: list[str]) -> None:
    """The command line a recipe stands for (stderr: it explains the run)."""
    import shlex

    if not _quiet.get():
        err.print(f"[dim]running: qconvert {escape(shlex.join(argv))}[/]", highlight=False)


def presets(items: list[Preset], explicit: list[str]) -> None:
    """What each preset expanded to (stderr: it explains the run; the result records the config)."""
    if _quiet.get():
        return
    for p in items:
        settings = " ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in p.settings.items())
        err.print(f"[bold]preset {p.name}[/] ({p.kind}): {escape(settings)}", highlight=False)
        err.print(f"  [dim]{escape(p.summary)}[/]", highlight=False)
    if explicit:
        err.print(f"  [dim]given explicitly, over the preset(s): {', '.join(explicit)}[/]", highlight=False)


def trial(t: Trial) -> None:
    """One accuracy-search round, as it finishes (stderr: progress, not the result)."""
    if _quiet.get():
        return
    drop = "" if t.accuracy_drop is None else f" · drop {t.accuracy_drop:.2f} pts"
    verdict = "[green]meets the target[/]" if t.passed else "[yellow]misses[/]"
    err.print(f"trial {t.index}: {len(t.kept)} node(s) {t.handling} · worst cosine {_fmt(t.worst_cosine, '.5f')} · "
              f"SQNR {_fmt(t.sqnr_db, '.1f')} dB{drop} · {verdict}", highlight=False)


def search_result(r: SearchResult) -> None:
    table = Table(title=f"accuracy search: {len(r.trials)} trial(s), {r.ranked_nodes} nodes ranked by own error; "
                        f"FP32 p50 {_fmt(r.fp32_p50_ms, '.3f')} ms", title_justify="left")
    for column in ("trial", "sensitive", "worst cosine", "SQNR dB", "drop pts", "p50 ms", "speedup", "target"):
        table.add_column(column, justify="right")
    for t in r.trials:
        mark = "[green]met[/]" if t.passed else "missed"
        chosen = " ←" if t.index == r.chosen else ""
        table.add_row(f"{t.index}{chosen}", str(len(t.kept)), _fmt(t.worst_cosine, ".5f"), _fmt(t.sqnr_db, ".1f"),
                      _fmt(t.accuracy_drop, ".2f"), _fmt(t.p50_ms, ".3f"),
                      "—" if t.speedup is None else f"{t.speedup:.2f}×", mark)
    out.print(table)
    if r.kept:
        handling = {"float": "kept in float", "dynamic": "quantized dynamically", "int16": "16-bit activations"}
        kept = Table(title=f"sensitive nodes, {handling.get(r.trials[r.chosen].handling.value, '')} (rank by error)",
                     title_justify="left")
        for column in ("rank", "node", "op", "own SQNR dB", "total SQNR dB"):
            kept.add_column(column, justify="left" if column in ("node", "op") else "right", overflow="fold")
        whole = Counter(k.op_type for k in r.kept if k.rank is None)  # kept with their op type: one row each
        for op_type, count in sorted(whole.items()):
            kept.add_row("type", f"every {escape(op_type)} ({count} node(s))", escape(op_type), "", "")
        for k in r.kept:
            if k.rank is not None:
                kept.add_row(str(k.rank), escape(k.node), escape(k.op_type), _db(k.own_sqnr_db), _db(k.total_sqnr_db))
        out.print(kept)
    if not r.met:
        err.print("[bold red]the accuracy search did not reach the target[/] within its trials: the closest model "
                  "was written", highlight=False)
    for note in [] if _quiet.get() else r.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def pipeline_result(r: PipelineResult, payload: Mapping[str, object], *, as_json: bool) -> None:
    """quantize, then validate, benchmark and analyze when asked; `payload` is what the report holds."""
    if as_json:
        print_json(payload)
        warnings(r.quantize.warnings)
        warnings([w for v in r.validate for w in v.warnings])
        fallback_warnings([(v.quantized_path, v.placement) for v in r.validate])
        fallback_warnings([(m.path, m.placement) for b in r.benchmark for m in b.models])
        return
    quantize_result(r.quantize)
    if r.search is not None:
        search_result(r.search)
    if r.weight_search is not None:
        weight_search_result(r.weight_search)
    for v in r.validate:
        validate_result(v, as_json=False)
    for b in r.benchmark:
        benchmark_result(b, as_json=False)
    if r.analyze is not None:
        analyze_result(r.analyze, as_json=False, top=10)


def weight_search_result(r: WeightSearchResult, top: int = 10) -> None:
    """The weight-only search: each trial, then the most sensitive weights with what 8 bits cost them."""
    table = Table(title=f"weight search ({r.windows} windows per trial): "
                        + ("[green]target met[/]" if r.met else "[yellow]target missed[/]"), title_justify="left")
    for column in ("trial", "8-bit weights", "size", "PPL ratio", "top-1 =", ""):
        table.add_column(column, justify="right")
    for t in r.trials:
        table.add_row(str(t.index), str(t.eight_bit), human_bytes(t.file_bytes), f"{t.perplexity_ratio:.4f}×",
                      f"{t.top1_agreement * 100:.1f}%", "[green]meets[/]" if t.passed else "misses")
    out.print(table)
    ranked = Table(title=f"most sensitive weights per byte (of {len(r.ranking)}): KL from FP32 with only it at 4 bits",
                   title_justify="left")
    for column in ("rank", "weight", "role", "KL", "8 bits cost", "8-bit"):
        ranked.add_column(column, justify="left" if column in ("weight", "role") else "right")
    for w in r.ranking[:top]:
        ranked.add_row(str(w.rank), escape(", ".join(w.nodes)), w.role, f"{w.kl:.2e}", human_bytes(w.extra_bytes),
                       "yes" if w.eight_bit else "")
    out.print(ranked)


_STATUS = {"passed": "[green]passed[/]", "missed": "[yellow]missed a gate[/]", "failed": "[bold red]failed[/]"}


def batch_item(item: BatchItem) -> None:
    """One model of a batch, as it finishes (stderr: progress, not the result)."""
    if _quiet.get():
        return
    why = ""
    if item.error:
        why = f": {item.error.message}"
    elif item.result and item.status.value == "missed":
        failed = [g for g in item.result.gates if not g.passed]
        why = ": " + "; ".join(f"{g.name} {_fmt(g.value, '.4g')} vs {g.threshold}" for g in failed)
    err.print(f"{_STATUS[item.status.value]} {escape(item.model)} ({item.seconds:.1f} s){escape(why)}",
              highlight=False)


def batch_result(r: BatchResult, *, as_json: bool) -> None:
    """The summary table of a batch: one row per model, whatever became of it."""
    if as_json:
        print_json(r.to_dict())
        return
    counts = r.counts()
    table = Table(title=f"{len(r.items)} models · {counts['passed']} passed · {counts['missed']} missed a gate · "
                        f"{counts['failed']} failed · {r.seconds:.1f} s with {r.workers} worker(s) · "
                        f"{escape(r.executor)}", title_justify="left")
    remote = r.executor != "local"
    columns = ["model", "status", "quantized nodes", "size", "mean cosine", "speedup", "note"]
    columns += ["worker", "waited"] if remote else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "status", "note", "worker") else "right",
                         overflow="fold")
    for item in r.items:
        where = [escape(item.worker or "—"), f"{item.waited:.1f} s"] if remote else []
        table.add_row(escape(Path(item.model).name), _STATUS[item.status.value], *_batch_cells(item), *where)
    out.print(table)
    warnings(r.warnings)


def _batch_cells(item: BatchItem) -> list[str]:
    if item.result is None:
        return ["—", "—", "—", "—", escape(item.error.message if item.error else "")]
    quantized = item.result.quantize
    worst = min((c for v in item.result.validate for o in v.outputs if (c := number(o.mean_cosine)) is not None),
                default=None)
    speed = min((s for b in item.result.benchmark for m in b.models[1:] if (s := number(m.speedup, 4)) is not None),
                default=None)
    return [f"{quantized.quantized_nodes}/{quantized.candidate_nodes}", f"{round(quantized.size_ratio, 3)}× smaller",
            _fmt(worst, ".5f"), "—" if speed is None else f"{speed:.2f}×",
            "; ".join(escape(w) for w in quantized.warnings)[:120]]


def _placement_cell(p: Placement) -> str:
    if p.all_on_cpu:
        return f"[bold red]0 of {p.nodes} nodes[/]"
    return f"{p.nodes_on_provider}/{p.nodes} ({p.share() * 100:.0f}%)"


def fallback_warnings(placements: list[tuple[str, Placement | None]]) -> None:
    """In red on stderr, whatever the output format: a CPU number must never pass for an NPU one."""
    for path, p in placements:
        if p is not None and p.mostly_on_cpu and not p.all_on_cpu:
            err.print(f"[bold red]{escape(path)}: {escape(p.provider)} took only {p.nodes_on_provider} of its "
                      f"{p.nodes} nodes ({p.share() * 100:.0f}%; quantized: {p.quantized_on_provider} of "
                      f"{p.quantized_nodes}): these figures are mostly the CPU provider's.[/]\n"
                      "hint: NPU providers need static input shapes (quantize with --fix-shape NAME=DIMS) and QDQ "
                      "patterns they support; gate on it with --min-provider-share", highlight=False)
        if p is not None and p.all_on_cpu:
            err.print(f"[bold red]{escape(path)}: {escape(p.provider)} took none of its {p.nodes} nodes: every "
                      f"node fell back to the CPU provider. These are CPU figures, not {escape(p.provider)} ones.[/]\n"
                      "hint: check the --ep-option values (device_type, backend…); NPU providers also need static "
                      "input shapes (quantize with --fix-shape NAME=DIMS) and QDQ patterns they support",
                      highlight=False)


def providers(items: list[ProviderInfo], *, as_json: bool) -> None:
    if as_json:
        print_json({"schema_version": SCHEMA_VERSION, "command": "providers",
                    "providers": [i.to_dict() for i in items]})
        return
    table = Table(title="execution providers (--ep takes the alias or the name)", title_justify="left")
    for column in ("alias", "name", "from", "devices"):
        table.add_column(column)
    for i in items:
        table.add_row(escape(i.alias), escape(i.name), escape(i.source), escape(", ".join(i.devices)) or "—")
    out.print(table)
