"""The weight-only accuracy search: the fewest weights in 8 bits that bring a 4-bit language model
within --max-ppl-ratio (and --min-top1) of FP32 on the evaluation text.

1. Every weight is ranked by what it alone costs at 4 bits, measured on the evaluation text: the
   KL divergence from FP32 of the FP32 model with only that weight at its 4-bit values (GPTQ's, when
   GPTQ is used), divided by the bytes 8 bits would add. One session serves every weight: the
   weights are its inputs, overridden per run. A tied embedding and lm_head are one matrix and one
   choice.
2. Trials write the model with the top k in 8 bits, k = 0, 1, 2, 4, … (the model job reads, plans
   and solves GPTQ once), each measured on the text against FP32, until the gates are met; then k
   is bisected down to the smallest that meets them, within `max_trials`. The output is the
   smallest model that met them, or, when none did, the last tried (the gates then fail: exit 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from qconvert import progress
from qconvert.calibration.text import read_tokens
from qconvert.config import EPConfig, Gates, LanguageConfig, QuantizeConfig, TextData
from qconvert.errors import UsageError
from qconvert.measurement.language import compare_language, log_softmax
from qconvert.model.decoder import require_decoder
from qconvert.model.files import check_output_path, remove_model, staging_dir
from qconvert.model.loading import LoadedModel
from qconvert.providers import quiet_onnxruntime
from qconvert.quantization.ranges import exposing_session
from qconvert.quantization.weight_only import WeightJob, stored_bytes
from qconvert.results import QuantizeResult, WeightSearchResult, WeightSensitivity, WeightTrial

RANKING_WINDOWS = 2  # evaluation windows each weight's effect is measured on


def search_weights(model: LoadedModel, output: Path, calibration: TextData | None, *, config: QuantizeConfig,
                   text: TextData, gates: Gates, language: LanguageConfig, max_trials: int,
                   ep: EPConfig | None = None, force: bool = False,
                   on_trial: Callable[[WeightTrial], None] | None = None) -> tuple[QuantizeResult, WeightSearchResult]:
    """Write into `output` the 4-bit model with the fewest most-sensitive weights in 8 bits that meets
    `gates` on `text`; return its quantize result and the search."""
    if not gates.on_text:
        raise UsageError("the weight-only search needs a target on the text", hint="add --max-ppl-ratio or --min-top1")
    if config.weight_only.bits != 4:
        raise UsageError("the weight-only search raises 4-bit weights to 8 bits: it needs --weights int4",
                         hint="drop --weights int8, or drop the text gates")
    ep = ep or EPConfig()
    check_output_path(output, inputs=(model.path,), force=force)
    job = WeightJob(model, config, calibration)
    tokens = read_tokens(text, model.path)
    measured = replace(language, prompts=0)  # the windows validation reads: a trial that meets, validates
    with staging_dir(output) as work:
        ranking = _rank(job, text, work, ep)
        order = [r.nodes for r in ranking]
        trials: list[WeightTrial] = []
        found_windows: list[int] = []

        def trial(k: int) -> WeightTrial:
            chosen = tuple(name for group in order[:k] for name in group)
            staged = work / f"trial{len(trials)}-{output.name}"
            written = job.write(staged, eight_bit=chosen, force=True)
            found = compare_language(model.path, staged, tokens, config=measured, ep=ep)
            found_windows[:] = [found.windows]
            met = (gates.max_ppl_ratio is None or found.perplexity_ratio <= gates.max_ppl_ratio) and (
                gates.min_top1 is None or found.top1_agreement >= gates.min_top1)
            done = WeightTrial(len(trials), k, written.bytes_after, found.perplexity_ratio, found.top1_agreement,
                               met)
            remove_model(staged)
            trials.append(done)
            if on_trial:
                on_trial(done)
            return done

        best = _steps(trial, len(order), max_trials)
    chosen = tuple(name for group in order[:best.eight_bit] for name in group)
    result = job.write(output, eight_bit=chosen, force=force, last=True)
    ranking = [replace(r, eight_bit=r.rank <= best.eight_bit) for r in ranking]
    return result, WeightSearchResult(trials, ranking, best.passed, found_windows[0] if found_windows else 0)


def _steps(trial: Callable[[int], WeightTrial], groups: int, max_trials: int) -> WeightTrial:
    """k = 0, 1, 2, 4, … until a trial passes, then bisection between the last miss and the first pass;
    the smallest passing trial, else the last one."""
    missed, best, last = -1, None, None
    k = 0
    with progress.task("weight search", total=None):
        for _ in range(max_trials):
            last = trial(k)
            if last.passed:
                best = last
            else:
                missed = k
            if best is None:
                if k >= groups:
                    break
                k = min(groups, max(1, 2 * k))
            else:
                if best.eight_bit - missed <= 1:
                    break
                k = (missed + best.eight_bit) // 2
    assert last is not None  # max_trials >= 1
    return best or last


def _rank(job: WeightJob, text: TextData, work: Path, ep: EPConfig) -> list[WeightSensitivity]:
    """Every 4-bit candidate ranked by what it alone costs at 4 bits, measured: the KL divergence from
    FP32 of the FP32 model with only that weight (or tied pair) replaced by its 4-bit values, on the
    first windows of `text`, per byte 8 bits would add. One session serves every weight: the weights
    are graph inputs there, overridden per run."""
    signature = require_decoder(job.loaded.proto, job.loaded.path)
    feeds = job.text_feeds(text, RANKING_WINDOWS)
    by_name = {n.name: n for n in job.plan.nodes}
    names = [n.name for n in job.plan.nodes if n.name in job.plan.bits and not n.graph]
    groups = _groups(job, names)
    session = _overriding_session(job, sorted({by_name[n].weight for n in names}), work, ep)
    logits = signature.logits
    with quiet_onnxruntime():
        reference = [log_softmax(session.run([logits], f)[0][0]) for f in feeds]
        costs: list[tuple[list[str], float]] = []
        with progress.task("ranking weights", total=len(groups)) as step:
            for group in groups:
                swapped = {by_name[n].weight: job.rounded(by_name[n], 4) for n in group}
                kl = 0.0
                for f, ref in zip(feeds, reference, strict=True):
                    cand = log_softmax(session.run([logits], {**f, **swapped})[0][0])
                    kl += float(np.mean(np.sum(np.exp(ref) * (ref - cand), axis=-1)))
                costs.append((group, kl / len(feeds)))
                step()
    config = job.config.weight_only
    extra = {tuple(g): stored_bytes(by_name[g[0]], 8, config) - stored_bytes(by_name[g[0]], 4, config)
             for g, _ in costs}
    ranked = sorted(costs, key=lambda c: -c[1] / max(extra[tuple(c[0])], 1))
    return [WeightSensitivity(tuple(g), by_name[g[0]].role if len(g) == 1 else "lm_head+embedding", rank, kl,
                              extra[tuple(g)], False) for rank, (g, kl) in enumerate(ranked, start=1)]


def _overriding_session(job: WeightJob, weights: list[str], work: Path, ep: EPConfig) -> Any:
    """A CPU session on the job's (float) model with `weights` also graph inputs, so a run can feed other
    values for them."""
    from onnx import helper

    proto = job.proto
    kept = len(proto.graph.input)
    tensors = {t.name: t for t in proto.graph.initializer}
    proto.graph.input.extend(helper.make_tensor_value_info(name, tensors[name].data_type, list(tensors[name].dims))
                             for name in weights)
    try:
        with quiet_onnxruntime():
            return exposing_session(proto, [], work / "weights-as-inputs.onnx", external=True,
                                    failure="the model with its weights as inputs does not load",
                                    hint="rank with --weight-method rtn, or give --eight-bit by hand",
                                    threads=ep.threads)
    finally:
        del proto.graph.input[kept:]


def _groups(job: WeightJob, names: list[str]) -> list[list[str]]:
    """One group per weight, a tied embedding with its lm_head."""
    tied = {gather: head for gather, head in job.plan.tied.items() if gather in names and head in names}
    return [[n, *[g for g, h in tied.items() if h == n]] for n in names if n not in tied]
