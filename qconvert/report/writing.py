"""Reports: where they may go (never over a file the run reads or writes), their names in a batch,
and writing them atomically, as JSON or as a self-contained HTML page."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qconvert.config import PipelineJob
from qconvert.errors import OutputError
from qconvert.model.files import is_same_file, write_output
from qconvert.results import AnalyzeResult, BatchResult, BenchmarkResult, PipelineResult, ValidateResult
from qconvert.workflows.batch import output_for


def check_report_path(path: Path, *, inputs: Iterable[Path] = ()) -> None:
    """Refuse a report that could not be written, or that would replace one of `inputs` (the run's
    models, data and outputs; directly or through a link), before any work is done for it."""
    if path.is_dir():
        raise OutputError(f"the report {path} is a folder", hint="give a file name ending in .json or .html")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write the report {path}: its folder does not exist",
                          hint="create the folder first, or write the report elsewhere")
    for src in inputs:
        if is_same_file(path, src):
            raise OutputError(f"the report {path} would replace {src}, which this run reads or writes",
                              hint="write the report to a file of its own; qconvert never modifies its inputs")


@dataclass(frozen=True)
class ReportPlan:
    """Where a quantize run's report goes: one file, or one per model of a batch (`{stem}` in the name)."""

    paths: tuple[Path, ...]
    per_model: bool


def plan_reports(report: Path, jobs: Sequence[PipelineJob], *, batch: bool, besides: Iterable[Path] = ()) -> ReportPlan:
    """The report files of a quantize run, checked before any work: for a batch, one per model when
    the name has {stem} (in the models' order), their folders made like the outputs'; else one.
    None may be a file the run reads or writes (`besides`, the models and the outputs)."""
    per_model = batch and "{stem}" in str(report)
    paths = tuple(output_for(j.model, report, batch=True) for j in jobs) if per_model else (report,)
    inputs = (*besides, *(j.model for j in jobs), *(j.output for j in jobs))
    for path in paths:
        if batch:
            path.parent.mkdir(parents=True, exist_ok=True)
        check_report_path(path, inputs=inputs)
    return ReportPlan(paths, per_model)


Reported = PipelineResult | BatchResult | ValidateResult | BenchmarkResult | AnalyzeResult


def write_reports(result: Reported, plan: ReportPlan) -> None:
    """A run's report: each model's of a batch, or the whole result's (a pipeline's, or quantize's
    own when nothing ran after it)."""
    if isinstance(result, BatchResult) and plan.per_model:
        for path, item in zip(plan.paths, result.items, strict=True):
            if item.result is not None:
                write_report(item.result.report(), path)
    else:
        write_report(result.report() if isinstance(result, PipelineResult) else result.to_dict(), plan.paths[0])


def write_report(payload: dict[str, object], path: str | Path) -> None:
    """Write a report atomically (a temporary file beside it, then a rename): HTML when the name
    ends in .html or .htm, else JSON."""
    target = Path(path)
    if target.suffix.lower() in (".html", ".htm"):
        from qconvert.report.html import render_html

        text = render_html(payload)
    else:
        text = json.dumps(payload, indent=2) + "\n"
    write_output(target, text, "report")
