"""A quantized model measured against its FP32 original on real data, with pass/fail gates.

Both models see the same samples, one at a time; every metric is accumulated as samples stream,
so memory stays flat however much evaluation data there is. The FP32 model always runs on the
CPU provider (the reference); the quantized one on the provider asked for, so accuracy is
measured as the target computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert import progress
from qconvert.calibration import data_for
from qconvert.config import EPConfig, Gates, TextData, ValidateConfig
from qconvert.errors import DataError, ModelError, UsageError, first_line
from qconvert.measurement.language import validate_language
from qconvert.measurement.metrics import cosine, nan_lowest, sqnr_db
from qconvert.model.loading import check_model_file
from qconvert.providers import create_session, placement, quiet_onnxruntime, resolve, signature
from qconvert.results import Gate, OutputMetrics, ValidateResult, provider_gates

if TYPE_CHECKING:
    from qconvert.calibration import CalibrationData
    from qconvert.config import DataConfig


# An FP32 output whose values spread less than this (relative to their size) is constant, and one
# whose largest |value| is below NEARLY_ZERO is zero: a detector's probability map on images without
# any object, for example. Cosine to FP32 is then noise.
CONSTANT_SPREAD = 1e-6
NEARLY_ZERO = 1e-4


@dataclass
class _Accumulator:
    """Running sums for one output: nothing per sample is kept but the worst cosine."""

    name: str
    samples: int = 0
    elements: int = 0
    cosine_sum: float = 0.0
    worst_cosine: float = math.nan
    worst_sample: int = -1
    max_abs: float = 0.0
    abs_sum: float = 0.0
    squared_error: float = 0.0
    squared_signal: float = 0.0
    non_finite: int = 0
    classifier: bool = False
    agree: int = 0
    rows: int = 0
    low: float = math.inf  # the FP32 output's smallest and largest values over every sample
    high: float = -math.inf

    def add(self, index: int, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise ModelError(f"output {self.name!r} has shape {list(got.shape)} in the quantized model but "
                             f"{list(ref.shape)} in the FP32 one (sample {index})",
                             hint="the two models must compute the same outputs")
        r, g = ref.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(g)
        self.non_finite += int(g.size - np.count_nonzero(finite))
        c = cosine(r, g)
        self.samples += 1
        self.cosine_sum += c
        if self.worst_sample < 0 or nan_lowest(c) < nan_lowest(self.worst_cosine):
            self.worst_cosine, self.worst_sample = c, index
        err = np.abs(r - g)
        self.elements += r.size
        self.max_abs = max(self.max_abs, float(err.max(initial=0.0)))
        self.abs_sum += float(err.sum())
        self.squared_error += float(np.square(err).sum())
        self.squared_signal += float(np.square(r).sum())
        low = float(np.fmin.reduce(r, axis=None, initial=math.inf))
        high = float(np.fmax.reduce(r, axis=None, initial=-math.inf))
        if math.isfinite(low) and math.isfinite(high):  # NaN skipped, as the calibrators do
            self.low, self.high = min(self.low, low), max(self.high, high)
        if self.classifier:
            self.agree += int(np.count_nonzero(r.argmax(-1) == g.argmax(-1)))
            self.rows += int(np.prod(r.shape[:-1]))

    def unexercised(self) -> str | None:
        """Why cosine says nothing about this output on this data, when its FP32 values do not vary."""
        if not self.samples or not (math.isfinite(self.low) and math.isfinite(self.high)):
            return None
        peak = max(abs(self.low), abs(self.high))
        if self.high - self.low <= CONSTANT_SPREAD * max(1.0, peak):
            return f"is constant ({self.low:.4g}) over the data"
        if peak < NEARLY_ZERO:
            return f"is nearly zero over the data (|x| <= {peak:.2g})"
        return None

    def metrics(self) -> OutputMetrics:
        n = max(self.elements, 1)
        sqnr = sqnr_db(self.squared_signal, self.squared_error)
        return OutputMetrics(
            name=self.name, samples=self.samples,
            mean_cosine=self.cosine_sum / self.samples if self.samples else math.nan,
            worst_cosine=self.worst_cosine if self.samples else math.nan, worst_sample=self.worst_sample,
            max_abs_error=self.max_abs, mean_abs_error=self.abs_sum / n, mse=self.squared_error / n,
            sqnr_db=sqnr, non_finite=self.non_finite,
            top1_agreement=self.agree / self.rows if self.classifier and self.rows else None,
        )


def _check_signatures(fp32: Any, quant: Any, fp32_path: Path, quant_path: Path) -> None:
    """Inputs must match by name and type; outputs by name (their dtype may differ)."""
    problems = []
    a, b = signature(fp32.get_inputs()), signature(quant.get_inputs())
    if a != b:
        problems.append(f"inputs: FP32 {a} vs quantized {b}")
    names_a, names_b = [o.name for o in fp32.get_outputs()], [o.name for o in quant.get_outputs()]
    if names_a != names_b:
        problems.append(f"outputs: FP32 {names_a} vs quantized {names_b}")
    if problems:
        raise ModelError(f"{quant_path} is not a quantized version of {fp32_path}: their signatures differ",
                         hint="compare a model with the model it was quantized from", details=tuple(problems))


def _is_classifier(shape: list[Any]) -> bool:
    """[batch, classes] logits or probabilities: rank 2 with more than one class."""
    return len(shape) == 2 and not (isinstance(shape[1], int) and shape[1] < 2)


def _accuracy(correct: int, total: int) -> float | None:
    return correct / total if total else None


def validate(fp32_model: str | Path, quantized_model: str | Path,
             data: CalibrationData | DataConfig | TextData, *, config: ValidateConfig | None = None) -> ValidateResult:
    """Run both models on every sample of `data` (samples, or the configuration that names them) and
    measure how far the quantized outputs are from FP32; with labels (`data.label_key`) also top-1
    accuracy of both. On `TextData`, compare two language-model decoders on the text instead
    (`result.language`). Gates are evaluated into the result (`result.passed`); raising on failure is
    the caller's choice."""
    config = config or ValidateConfig()
    if isinstance(data, TextData):
        return validate_language(fp32_model, quantized_model, data, config=config)
    if config.gates.on_text:
        raise UsageError("--max-ppl-ratio and --min-top1 judge a language model on text",
                         hint="give --text FILE (or --tokens FILE.npy) instead of --data")
    fp32_path, quant_path = Path(fp32_model), Path(quantized_model)
    data = data_for(data, fp32_path)
    if config.gates.max_drop is not None and data.label_key is None:
        raise UsageError("--max-drop needs labels", hint="name the labels key with --labels KEY")
    check_model_file(fp32_path)
    check_model_file(quant_path)
    with quiet_onnxruntime():
        fp32 = create_session(fp32_path, EPConfig(threads=config.ep.threads))
        quant = create_session(quant_path, config.ep)
    where = placement(quant, resolve(config.ep.provider))
    _check_signatures(fp32, quant, fp32_path, quant_path)
    outputs = fp32.get_outputs()
    accs = [_Accumulator(o.name, classifier=_is_classifier(list(o.shape))) for o in outputs]
    label_output = next((i for i, a in enumerate(accs) if a.classifier), None)
    if data.label_key is not None and label_output is None:
        raise UsageError(f"--labels given but no output looks like class scores ([batch, classes]): "
                         f"{[(o.name, o.shape) for o in outputs]}", hint="drop --labels for this model")
    fp32_correct = quant_correct = labelled = 0
    samples = 0
    with quiet_onnxruntime(), progress.task("validation", total=data.expected_samples()) as step:
        for index, (sample, label) in enumerate(data.labelled()):
            try:
                ref = fp32.run(None, sample)
            except Exception as exc:
                raise DataError(f"the FP32 model fails on sample {index}: {first_line(exc)}",
                                hint="check the data against `qconvert inspect` of the model") from exc
            try:
                got = quant.run(None, sample)
            except Exception as exc:
                raise ModelError(f"the quantized model fails on sample {index}: "
                                 f"{first_line(exc)}",
                                 hint="the FP32 model ran on this sample; re-quantize, or try another --ep") from exc
            for acc, r, g in zip(accs, ref, got, strict=True):
                acc.add(index, np.asarray(r), np.asarray(g))
            if label is not None and label_output is not None:
                truth = label.reshape(-1).astype(np.int64)
                ref_top = np.asarray(ref[label_output]).argmax(-1).reshape(-1)
                got_top = np.asarray(got[label_output]).argmax(-1).reshape(-1)
                if truth.size != ref_top.size:
                    raise DataError(f"sample {index}: {truth.size} label(s) for {ref_top.size} prediction(s)",
                                    hint=f"store one label per sample under {data.label_key!r}")
                fp32_correct += int(np.count_nonzero(ref_top == truth))
                quant_correct += int(np.count_nonzero(got_top == truth))
                labelled += truth.size
            samples += 1
            step()
    if samples == 0:
        raise DataError(f"no samples in {data.description}", hint="point --data at non-empty data")
    metrics = [a.metrics() for a in accs]
    fp32_acc, quant_acc = _accuracy(fp32_correct, labelled), _accuracy(quant_correct, labelled)
    drop = (fp32_acc - quant_acc) * 100.0 if fp32_acc is not None and quant_acc is not None else None
    warnings = [f"the FP32 output {a.name!r} {why}: the data does not exercise the model, so cosine to FP32 is "
                "noise; judge it by max_abs_error or SQNR (--min-sqnr), or evaluate on data the model responds to"
                for a in accs if (why := a.unexercised()) is not None]
    return ValidateResult(
        fp32_path=str(fp32_path), quantized_path=str(quant_path), data=data.to_dict(), samples=samples,
        ep=config.ep, outputs=metrics, fp32_accuracy=fp32_acc, quantized_accuracy=quant_acc,
        accuracy_drop=drop, gates=_gates(config.gates, metrics, drop) + provider_gates(where, str(quant_path),
                                                                                  config.min_provider_share),
        placement=where, warnings=warnings,
    )


def _gates(gates: Gates, metrics: list[OutputMetrics], drop: float | None) -> list[Gate]:
    """Each gate on its worst output; NaN (a broken output) never passes."""
    found = []
    if gates.min_cosine is not None:
        worst = min(metrics, key=lambda m: nan_lowest(m.mean_cosine))
        found.append(Gate("min_cosine", gates.min_cosine, worst.mean_cosine,
                          worst.mean_cosine >= gates.min_cosine, worst.name))
    if gates.min_sqnr is not None:
        worst = min(metrics, key=lambda m: nan_lowest(m.sqnr_db))
        found.append(Gate("min_sqnr", gates.min_sqnr, worst.sqnr_db, worst.sqnr_db >= gates.min_sqnr, worst.name))
    if gates.max_drop is not None and drop is not None:
        found.append(Gate("max_drop", gates.max_drop, drop, drop <= gates.max_drop, None))
    return found
