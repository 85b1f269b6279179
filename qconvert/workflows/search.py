"""Accuracy-driven quantization: keep the nodes that break accuracy in float, as few as possible.

The model is prepared and calibrated once (`QuantizeJob`); each trial only re-runs onnxruntime's
quantizer with a different set of nodes kept in float, then measures the result against FP32 on
the evaluation data. When the first trial misses the target, `analyze` ranks the quantized nodes
by the error each adds on its own (its output computed from FP32 inputs inside the quantized
graph); the worst are re-ranked by the noise each causes at the outputs when it alone is
quantized. The search keeps the top k of that ranking out of static QDQ (in float, quantized
dynamically, or with 16-bit activations: `QuantizeConfig.sensitive`): k = 1, 2, 4. When that
misses, the error is spread: whole op types are kept out, worst first by the noise their nodes
cause (never the weighted ops that make the speed), then k = 1, 2, 4, … of the remaining suspects
on top until the target is met, bisecting between the last miss and the first hit for the
smallest k, all within `max_trials`. No rule is specific to a model or an op type: the ranking
comes from the data.

Every trial's model is kept until the end, then timed against FP32 interleaved, so the report
shows what each exclusion costs in latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert import progress
from qconvert.calibration import open_data
from qconvert.config import BenchmarkConfig, Mode, QuantizeConfig, SearchConfig, Sensitive, ValidateConfig
from qconvert.errors import ModelError, NothingQuantizedError, UsageError
from qconvert.measurement.analysis import NothingToCompare, analyze
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.metrics import ErrorSums, nan_lowest
from qconvert.measurement.validation import validate
from qconvert.model.files import check_output_path, move_into_place, staging_dir
from qconvert.model.graph import PROTOBUF_LIMIT
from qconvert.model.loading import LoadedModel, TensorSpec, input_specs
from qconvert.providers import cpu_session, quiet_onnxruntime
from qconvert.quantization.job import QuantizeJob
from qconvert.results import KeptNode, NodeError, QuantizeResult, SearchResult, Trial, ValidateResult

if TYPE_CHECKING:
    import onnx

    from qconvert.calibration import CalibrationData

EFFECT_CANDIDATES = 64  # suspects whose effect on the outputs is measured, worst own error first
EFFECT_SAMPLES = 16
DOMINANT_DB = 6.0  # weights this many dB cleaner than a node's own error do not explain it
FIRST_NODES = 4  # nodes kept one suspect at a time (k = 1, 2, 4) before whole op types are tried
TYPE_SHARE = 0.05  # an op type is kept whole only when its nodes cause this share of the measured noise


def _trial(index: int, kept: list[str], handling: Sensitive, v: ValidateResult) -> Trial:
    worst = min(v.outputs, key=lambda o: nan_lowest(o.mean_cosine))
    sqnr = min(o.sqnr_db for o in v.outputs)
    return Trial(index, kept, handling, worst.mean_cosine, sqnr, v.accuracy_drop, v.passed)


def _score(t: Trial) -> tuple[float, float, int]:
    """Ordering for "closest to the target" when none met it: accuracy first, fewer exclusions next."""
    drop = -t.accuracy_drop if t.accuracy_drop is not None else 0.0
    return (drop, nan_lowest(t.worst_cosine), -len(t.kept))


def search_quantize(model: LoadedModel, output: str | Path, data: CalibrationData | None, *,
                    config: QuantizeConfig, search: SearchConfig, force: bool = False,
                    on_trial: Callable[[Trial], None] | None = None,
                    ) -> SearchResult:
    """Quantize `model` into `output` meeting `search.gates` on `search.evaluation` with the fewest
    nodes kept in float. When the budget runs out first, the closest trial is written and the
    result's `validation` gates say it missed."""
    out = Path(output)
    check_output_path(out, inputs=(model.path,), force=force)
    specs = input_specs(model.proto)
    if search.gates.max_drop is not None and search.evaluation.labels is None:
        raise UsageError("--max-drop needs labels", hint="name the labels key with --labels KEY")
    with staging_dir(out) as work, progress.task("accuracy search", total=search.max_trials) as trial_done:
        job = QuantizeJob(model, out, data, config, work)
        job.prepare()
        job.calibrate()
        trials: list[Trial] = []
        runs: list[tuple[Path, QuantizeResult, ValidateResult]] = []
        notes: list[str] = []

        def run(keep: list[str], reasons: dict[str, str]) -> Trial | None:
            """One trial; None when keeping `keep` in float would leave nothing quantized."""
            folder = work / f"trial-{len(trials)}"
            folder.mkdir(exist_ok=True)
            path = folder / out.name
            try:
                if config.sensitive is Sensitive.INT16:
                    quantized = job.quantize(path, widen=keep)
                else:
                    quantized = job.quantize(path, {name: reasons[name] for name in keep})
            except NothingQuantizedError:
                if not trials:
                    raise
                return None
            except ModelError as exc:  # onnxruntime failed on this combination: keep what was found
                if not trials:
                    raise
                notes.append(f"a trial with {len(keep)} sensitive node(s) failed and ended the search: {exc.message}")
                return None
            checked = validate(model.path, path, open_data(search.evaluation, specs),
                               config=ValidateConfig(gates=search.gates))
            trial = _trial(len(trials), keep, config.sensitive, checked)
            trials.append(trial)
            runs.append((path, quantized, checked))
            trial_done()
            if on_trial:
                on_trial(trial)
            return trial

        ranking: list[_Suspect] = []
        first = run([], {})
        assert first is not None
        notes += runs[0][2].warnings
        if not first.passed and search.max_trials > 1:
            ranking = _by_output_effect(_rank(job, runs[0][0], search, specs, work), job, runs[0][0], search, specs)
            _search(ranking, job, search.max_trials, config.sensitive is Sensitive.INT16, run, lambda: len(trials))
        passing = [t for t in trials if t.passed]
        best = min(passing, key=lambda t: (len(t.kept), t.index)) if passing else max(trials, key=_score)
        if not ranking and not trials[0].passed:
            notes.append("no quantized node could be ranked against FP32: " + (
                "every one sits in an If/Loop/Scan body, which the analysis does not enter"
                if not job.plan.main_candidates else "tensor names did not match"))
        fp32_ms = _time_trials(model.path, [r[0] for r in runs], trials, search, specs) if search.benchmark_runs \
            else None
        path, quantized, checked = runs[best.index]
        quantized.bytes_after = move_into_place(path, out)
        checked.quantized_path = str(out)
    return SearchResult(search, trials, best.index, _kept(best.kept, ranking, job), len(ranking), quantized, checked,
                        fp32_p50_ms=fp32_ms, notes=notes)


@dataclass(frozen=True)
class _Suspect:
    """A ranked node and what must stay in float with it: the producers of the inputs whose
    quantization makes most of its error (a tensor stays quantized while its producer or any
    reader is quantized, so keeping the reader alone would not help)."""

    node: NodeError
    group: tuple[str, ...]
    effect: float = math.nan  # noise it causes at the outputs alone (relative power); nan: not measured


def _rank(job: QuantizeJob, first: Path, search: SearchConfig, specs: list[TensorSpec], work: Path) -> list[_Suspect]:
    """Quantized candidate nodes by the error each adds on its own, worst first; none when the
    analysis, which compares the main graph, finds nothing quantized there to compare."""
    if not job.plan.main_candidates:
        return []
    sample = replace(search.evaluation, max_samples=min(search.evaluation.max_samples or search.analyze_samples,
                                                        search.analyze_samples))
    try:
        report = analyze(job.prepared.path, first, open_data(sample, specs), work=work / "analyze",
                         prepare_reference=False)
    except NothingToCompare:
        return []
    candidates = {c.name for c in job.plan.candidates if c.name not in job.plan.excluded}
    quantized_inputs = {t.name for t in report.tensors if t.kind == "activation"}
    graph = job.prepared.proto.graph
    producers = {out: n.name for n in graph.node for out in n.output}
    inputs = {n.name: list(n.input) for n in graph.node}
    seen: set[str] = set()
    ranking = []
    for node in report.nodes:
        if node.node not in candidates or node.node in seen or node.own_sqnr_db == math.inf:
            continue
        seen.add(node.node)
        # A node's own error comes from its quantized inputs and weights (its output's quantization
        # is charged to its readers). Unless its weights alone are about as bad, the inputs did it.
        from_inputs = node.weight_sqnr_db is None or node.weight_sqnr_db > node.own_sqnr_db + DOMINANT_DB
        culprits = [producers[t] for t in inputs.get(node.node, [])
                    if from_inputs and t in quantized_inputs and t in producers]
        ranking.append(_Suspect(node, (node.node, *dict.fromkeys(c for c in culprits if c in candidates))))
    return ranking


def _by_output_effect(ranking: list[_Suspect], job: QuantizeJob, first: Path, search: SearchConfig,
                      specs: list[TensorSpec]) -> list[_Suspect]:
    """Re-rank the worst `EFFECT_CANDIDATES` suspects by the error each causes at the outputs alone.

    A node's own error says how badly it is quantized, not how much that matters downstream
    (Softmax and residual paths absorb errors differently). For each suspect, a copy of the FP32
    graph has only that node read its inputs and weights through the first trial's Q/DQ, and the
    outputs' noise power against FP32 on a few samples measures its damage: noise powers of
    independent errors add, so the nodes that cause the most, alone, are the first to keep in
    float. The rest keep their own-error order. Static QDQ graphs under 2 GB only: dynamic graphs
    rename the nodes they quantize, and bigger ones are not copied in memory.
    """
    import onnx

    quant = onnx.load(str(first))
    if job.mode is not Mode.STATIC or quant.ByteSize() >= PROTOBUF_LIMIT or len(ranking) < 2:
        return ranking
    prepared = onnx.load(str(job.prepared.path))
    feeds = list(open_data(replace(search.evaluation, max_samples=EFFECT_SAMPLES), specs))
    reference = _outputs(prepared, feeds)
    noise: dict[str, float] = {}
    suspects = ranking[:EFFECT_CANDIDATES]
    with progress.task("ranking nodes", total=len(suspects)) as step:
        for suspect in suspects:
            variant = _only_quantized(prepared, quant, suspect.node.node)
            if variant is not None:
                noise[suspect.node.node] = _output_noise(variant, feeds, reference)
            step()
    measured = sorted((replace(s, effect=noise[s.node.node]) for s in ranking if s.node.node in noise),
                      key=lambda s: -s.effect)
    return measured + [s for s in ranking if s.node.node not in noise]


def _only_quantized(prepared: onnx.ModelProto, quant: onnx.ModelProto, name: str) -> onnx.ModelProto | None:
    """The FP32 graph with node `name` alone reading its inputs through the quantized graph's
    QuantizeLinear/DequantizeLinear (and its dequantized weights)."""
    import onnx

    q_node = next((n for n in quant.graph.node if n.name == name), None)
    if q_node is None:
        return None
    variant = onnx.ModelProto()
    variant.CopyFrom(prepared)
    node = next((n for n in variant.graph.node if n.name == name), None)
    if node is None:
        return None
    producers = {out: n for n in quant.graph.node for out in n.output}
    q_inits = {t.name: t for t in quant.graph.initializer}
    added: set[str] = set()
    extra: list[onnx.NodeProto] = []

    def copy_in(source: onnx.NodeProto, inputs: list[str]) -> str:
        made = onnx.NodeProto()
        made.CopyFrom(source)
        del made.input[:]
        made.input.extend(inputs)
        made.output[0] = f"{source.output[0]}::only::{name}"
        made.name = f"{source.name}::only::{name}"
        extra.append(made)
        for t in inputs[1:] + ([inputs[0]] if inputs[0] in q_inits else []):
            if t in q_inits and t not in added:
                added.add(t)
                variant.graph.initializer.append(q_inits[t])
        return str(made.output[0])

    for i, tensor in enumerate(q_node.input):
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or i >= len(node.input):
            continue
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            quantized = copy_in(q, [node.input[i], *q.input[1:]])
            node.input[i] = copy_in(dq, [quantized, *dq.input[1:]])
        elif dq.input[0] in q_inits:
            node.input[i] = copy_in(dq, list(dq.input))
    # Right before the node, in order: whatever they read exists by then.
    position = list(variant.graph.node).index(node)
    for offset, made in enumerate(extra):
        variant.graph.node.insert(position + offset, made)
    domains = {o.domain for o in variant.opset_import}
    variant.opset_import.extend(o for o in quant.opset_import if o.domain not in domains)
    return variant


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    with quiet_onnxruntime():
        session = cpu_session(model.SerializeToString())
        return [session.run(None, f) for f in feeds]


def _output_noise(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                  reference: list[list[np.ndarray]]) -> float:
    """Noise power at the outputs relative to their signal power, summed over samples."""
    sums = ErrorSums()
    for ref, out in zip(reference, _outputs(model, feeds), strict=True):
        for r, g in zip(ref, out, strict=True):
            sums.add(np.asarray(r), np.asarray(g))
    return sums.noise / sums.signal if sums.signal else sums.noise


def _search(ranking: list[_Suspect], job: QuantizeJob, max_trials: int, widen: bool,
            run: Callable[[list[str], dict[str, str]], Trial | None], spent: Callable[[], int]) -> None:
    """Nodes first, then whole op types, then nodes again on top of them.

    A few suspects often explain the error (an outlier channel, one bad layer): keep the top
    1, 2, 4 out of static QDQ. When they do not, the error is spread over many nodes, usually of a
    few cheap op types (the residual Adds, LayerNorms and Softmaxes of a transformer, quantized
    per tensor across outlier channels): keep those op types out whole, worst first by the noise
    their nodes cause at the outputs, but never the weighted ops (Conv, MatMul, Gemm) that make
    the speed. Then rank by rank among the remaining suspects, on top of the op types kept.
    """
    reasons: dict[str, str] = {}
    for rank, suspect in enumerate(ranking, 1):
        n = suspect.node
        reasons.setdefault(n.node, f"kept out of static QDQ by the accuracy search: rank {rank} by its error "
                                   f"(own SQNR {n.own_sqnr_db:.1f} dB)")
        for other in suspect.group[1:]:
            reasons.setdefault(other, f"kept out of static QDQ by the accuracy search: writes an input whose "
                                      f"quantization makes most of the error of {n.node} (rank {rank})")
    if _bisect(ranking, [], reasons, max_trials, widen, run, spent, limit=FIRST_NODES):
        return
    base: list[str] = []
    kept_types: set[str] = set()
    for op_type, share in _noisy_op_types(ranking):
        if spent() >= max_trials:
            return
        kept_types.add(op_type)
        nodes = [c.name for c in job.plan.candidates
                 if c.op_type == op_type and not c.graph and c.name not in job.plan.excluded]
        for name in nodes:
            reasons[name] = (f"kept out of static QDQ by the accuracy search with every {op_type}: their nodes cause "
                             f"{share:.0%} of the output noise measured")
        trial = run([*base, *nodes], reasons)
        if trial is None:  # nothing would be left quantized
            kept_types.discard(op_type)
            continue
        base += nodes
        if trial.passed:
            return
    rest = [s for s in ranking if s.node.op_type not in kept_types]
    _bisect(rest, base, reasons, max_trials, widen, run, spent)


def _noisy_op_types(ranking: list[_Suspect]) -> list[tuple[str, float]]:
    """Op types other than the weighted ones, by the share of the measured output noise their nodes
    cause, worst first; only those above TYPE_SHARE, and only when more than one node is measured."""
    from qconvert.quantization.planning import WEIGHTED_OPS

    measured = [s for s in ranking if not math.isnan(s.effect)]
    total = sum(s.effect for s in measured)
    if total <= 0:
        return []
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s in measured:
        sums[s.node.op_type] = sums.get(s.node.op_type, 0.0) + s.effect
        counts[s.node.op_type] = counts.get(s.node.op_type, 0) + 1
    return sorted(((t, v / total) for t, v in sums.items()
                   if t not in WEIGHTED_OPS and counts[t] > 1 and v / total >= TYPE_SHARE), key=lambda tv: -tv[1])


def _bisect(ranking: list[_Suspect], base: list[str], reasons: dict[str, str], max_trials: int, widen: bool,
            run: Callable[[list[str], dict[str, str]], Trial | None], spent: Callable[[], int],
            limit: int | None = None) -> bool:
    """Keep `base` and the top k suspects out of static QDQ (in float, or widened): k doubles until
    a trial passes (or passes `limit`), then bisects down to the smallest k. Returns whether a
    trial passed."""

    def nodes(k: int) -> list[str]:
        chosen = ranking[:k]
        picked = [s.node.node for s in chosen] if widen else [m for s in chosen for m in s.group]
        return list(dict.fromkeys([*base, *picked]))

    # Keeping every ranked node out would leave nothing quantized: stop one short of that.
    top = max(len(ranking) - (0 if widen else 1), 0)
    if limit is not None:
        top = min(top, limit)
    failing, passing = 0, None
    k = 1
    while passing is None and failing < top and spent() < max_trials:
        k = min(k, top)
        trial = run(nodes(k), reasons)
        if trial is None:  # nothing would be left quantized: search between the last miss and here
            top = k - 1
            k = failing + max((top - failing) // 2, 1)
            continue
        if trial.passed:
            passing = k
        else:
            failing = k
        k *= 2
    while passing is not None and passing - failing > 1 and spent() < max_trials:
        mid = (failing + passing) // 2
        trial = run(nodes(mid), reasons)
        if trial is not None and trial.passed:
            passing = mid
        else:
            failing = mid
    return passing is not None


def _kept(names: list[str], ranking: list[_Suspect], job: QuantizeJob) -> list[KeptNode]:
    """The nodes of a trial with the rank of the suspect that brought each in."""
    op_types = {c.name: c.op_type for c in job.plan.candidates}
    found: dict[str, KeptNode] = {}
    for rank, suspect in enumerate(ranking, 1):
        for name in suspect.group:
            own = suspect.node if name == suspect.node.node else None
            found.setdefault(name, KeptNode(name, op_types.get(name, "?"), rank,
                                            own.own_sqnr_db if own else math.nan,
                                            own.total_sqnr_db if own else math.nan))
    return [found.get(name) or KeptNode(name, op_types.get(name, "?"), None, math.nan, math.nan) for name in names]


def _time_trials(fp32: Path, paths: list[Path], trials: list[Trial], search: SearchConfig,
                 specs: list[TensorSpec]) -> float:
    """FP32 and every trial model timed interleaved, one thread: the latency of each exclusion set.
    Returns FP32's median."""
    feeds = batch_feeds(open_data(search.evaluation, specs), 1)
    timed = benchmark([fp32, *paths], feeds, config=BenchmarkConfig(runs=search.benchmark_runs, reference_first=True))
    for trial, latency in zip(trials, timed.models[1:], strict=True):
        trial.p50_ms, trial.speedup = latency.p50_ms, latency.speedup
    return timed.models[0].p50_ms
