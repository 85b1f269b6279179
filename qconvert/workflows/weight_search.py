"""The weight-only accuracy search: the fewest weights in 8 bits that bring a 4-bit language model
within --max-ppl-ratio (and --min-top1) of FP32 on the evaluation text.

1. Every weight is ranked by the noise 4 bits add to its output on the evaluation text, relative
   to that output: trace(ΔWᵀ H ΔW) / trace(Wᵀ H W), with H = XᵀX of its inputs on the text (for an
   embedding, the rows the text reads, as often as it reads them). A tied embedding and lm_head
   are one matrix and one choice.
2. Trials write the model with the top k in 8 bits, k = 0, 1, 2, 4, … (the model job reads, plans
   and solves GPTQ once), each measured on the text against FP32, until the gates are met; then k
   is bisected down to the smallest that meets them, within `max_trials`. The output is the
   smallest model that met them, or, when none did, the last tried (the gates then fail: exit 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from qconvert import progress
from qconvert.calibration.text import read_tokens
from qconvert.config import EPConfig, Gates, LanguageConfig, QuantizeConfig, TextData
from qconvert.errors import UsageError
from qconvert.measurement.language import compare_language
from qconvert.model.files import check_output_path, file_nbytes, staging_dir
from qconvert.model.loading import LoadedModel
from qconvert.quantization.gptq import rtn_quantize
from qconvert.quantization.weight_only import EMBEDDING, WeightJob, WeightNode, table_blocks
from qconvert.results import QuantizeResult, WeightSearchResult, WeightSensitivity, WeightTrial

RANKING_WINDOWS = 8  # evaluation windows the activations for the ranking come from
TRIAL_WINDOWS = 16  # evaluation windows each trial is measured on (unless --max-windows says fewer)


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
    measured = replace(language, prompts=0, max_windows=min(language.max_windows or TRIAL_WINDOWS, TRIAL_WINDOWS))
    with staging_dir(output) as work:
        ranking = _rank(job, text, work)
        order = [r.nodes for r in ranking]
        trials: list[WeightTrial] = []

        def trial(k: int) -> WeightTrial:
            chosen = tuple(name for group in order[:k] for name in group)
            staged = work / f"trial{len(trials)}-{output.name}"
            job.write(staged, eight_bit=chosen, force=True)
            found = compare_language(model.path, staged, tokens, config=measured, ep=ep)
            met = (gates.max_ppl_ratio is None or found.perplexity_ratio <= gates.max_ppl_ratio) and (
                gates.min_top1 is None or found.top1_agreement >= gates.min_top1)
            done = WeightTrial(len(trials), k, file_nbytes(staged), found.perplexity_ratio, found.top1_agreement, met)
            trials.append(done)
            if on_trial:
                on_trial(done)
            return done

        best = _steps(trial, len(order), max_trials)
    chosen = tuple(name for group in order[:best.eight_bit] for name in group)
    result = job.write(output, eight_bit=chosen, force=force, last=True)
    ranking = [replace(r, eight_bit=r.rank <= best.eight_bit) for r in ranking]
    return result, WeightSearchResult(trials, ranking, best.passed, measured.max_windows or 0)


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


def _rank(job: WeightJob, text: TextData, work: Path) -> list[WeightSensitivity]:
    """Every 4-bit candidate ranked by its relative output noise at 4 bits on `text`, worst first."""
    from onnx import numpy_helper

    config = job.config.weight_only
    hessians = job.hessians(text, RANKING_WINDOWS, work)
    tensors = {t.name: t for t in job.proto.graph.initializer}
    counts = np.bincount(read_tokens(text, job.loaded.path))
    scores: dict[str, float] = {}
    for n in job.plan.nodes:
        if n.name in job.plan.excluded or n.name not in job.plan.bits or n.graph or n.weight not in tensors:
            continue
        weight = numpy_helper.to_array(tensors[n.weight]).astype(np.float32).reshape(n.rows, n.cols)
        if n.op_type == "MatMul" and n.name in hessians:
            h = hessians[n.name].matrix
            delta = weight - rtn_quantize(weight, bits=4, block_size=config.blocks, symmetric=config.symmetric)
            scores[n.name] = float(np.sum(delta * (h @ delta)) / max(float(np.sum(weight * (h @ weight))), 1e-30))
        elif n.role == EMBEDDING:
            used = np.zeros(n.rows)
            used[:min(n.rows, counts.size)] = counts[:n.rows]
            blocks = table_blocks(n.cols, config.blocks) or config.blocks
            delta = weight - rtn_quantize(weight.T, bits=4, block_size=blocks, symmetric=config.symmetric).T
            scores[n.name] = float(used @ np.sum(delta * delta, axis=1) / max(float(used @ np.sum(weight * weight,
                                                                                                  axis=1)), 1e-30))
    groups = _groups(job, list(scores))
    ranked = sorted(groups, key=lambda g: -max(scores[n] for n in g))
    by_name = {n.name: n for n in job.plan.nodes}
    return [WeightSensitivity(tuple(g), by_name[g[0]].role if len(g) == 1 else "lm_head+embedding", rank,
                              max(scores[n] for n in g), _extra_bytes(by_name[g[0]], config.blocks), False)
            for rank, g in enumerate(ranked, start=1)]


def _groups(job: WeightJob, names: list[str]) -> list[list[str]]:
    """One group per weight, a tied embedding with its lm_head."""
    tied = {gather: head for gather, head in job.plan.tied.items() if gather in names and head in names}
    return [[n, *[g for g, h in tied.items() if h == n]] for n in names if n not in tied]


def _extra_bytes(node: WeightNode, block_size: int) -> int:
    """What 8 bits take beyond 4: half a byte per weight, and the zero points' extra half byte per block."""
    blocks = -(-node.rows // block_size) * node.cols if node.op_type == "MatMul" else node.params // block_size
    return node.params // 2 + blocks // 2
