"""All terminal output: Rich tables for people, plain JSON for programs.

Results go to stdout; progress, warnings and errors to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qconvert.errors import QconvertError
from qconvert.results import InspectResult, QuantizeResult

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def print_json(payload: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(exc: QconvertError, *, as_json: bool) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
    for line in exc.details:
        err.print(f"  - {line}", highlight=False, markup=False)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)
    if as_json:
        print_json(exc.to_dict())


def internal_error(exc: BaseException) -> None:
    err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
    err.print("this is a bug in qconvert; re-run with --debug for the traceback", highlight=False)


def interrupted() -> None:
    err.print("[yellow]interrupted[/]")


def warnings(items: list[str]) -> None:
    for w in items:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


def inspect_result(r: InspectResult) -> None:
    d = r.to_dict()
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
    ops = Table(title=f"{d['nodes']} nodes ({r.subgraph_nodes} in subgraphs)", title_justify="left")
    for col in ("op type", "count", "static candidates", "dynamic candidates"):
        ops.add_column(col, justify="right" if col != "op type" else "left")
    for op, n in r.op_types.items():
        ops.add_row(escape(op), str(n), str(r.candidates["static"].get(op, "")),
                    str(r.candidates["dynamic"].get(op, "")))
    out.print(ops)
    params = ", ".join(f"{k}: {v['count']:,} ({human_bytes(v['bytes'])})" for k, v in r.parameters.items())
    out.print(f"parameters: {d['parameter_count']:,} · {params or 'none'}", highlight=False)
    out.print(f"file: {human_bytes(r.file_bytes)} · external data: {'yes' if r.external_data else 'no'}",
              highlight=False)
    fmt = r.quantized_format
    out.print(f"already quantized: {'[yellow]yes (' + fmt + ')[/]' if fmt else 'no'}", highlight=False)


def quantize_result(r: QuantizeResult, *, verbose: bool = False) -> None:
    d = r.to_dict()
    out.print(f"[bold]{escape(r.input_path)}[/] → [bold]{escape(r.output_path)}[/]", highlight=False)
    smoke = " [yellow](synthetic data: smoke run, not a real calibration)[/]" if r.smoke_run else ""
    out.print(f"mode: [bold]{r.mode}[/] ({r.mode_reason}){smoke}", highlight=False)
    table = Table(title=f"{r.quantized_nodes} of {r.candidate_nodes} candidate nodes quantized", title_justify="left")
    table.add_column("op type")
    table.add_column("quantized", justify="right")
    table.add_column("candidates", justify="right")
    for op, c in sorted(r.op_types.items(), key=lambda kv: (-kv[1].candidates, kv[0])):
        table.add_row(op, str(c.quantized), str(c.candidates))
    out.print(table)
    if r.skipped:
        reasons = Table(title=f"{len(r.skipped)} candidate nodes left in float", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("nodes", justify="right")
        reasons.add_column("examples")
        for reason, n in r.skip_reasons().most_common():
            names = [s.name for s in r.skipped if s.reason == reason]
            shown = names if verbose else names[:3]
            more = " …" if len(names) > len(shown) else ""
            reasons.add_row(escape(reason), str(n), escape(", ".join(shown) + more))
        out.print(reasons)
    out.print(f"size: {human_bytes(r.bytes_before)} → {human_bytes(r.bytes_after)} "
              f"([bold]{r.size_ratio:.2f}×[/] smaller)", highlight=False)
    t = d["time_seconds"]
    assert isinstance(t, dict)
    out.print(f"time: prepare {t['prepare']:.2f} s · calibration {t['calibration']:.2f} s "
              f"({r.calibration_samples} samples) · quantization {t['quantization']:.2f} s", highlight=False)
    cfg = r.config
    out.print("config: " + escape(" ".join(f"{k}={v}" for k, v in cfg.items() if v not in ((), [], None))),
              highlight=False)
    warnings(r.warnings)
