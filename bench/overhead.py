"""qconvert's overhead over calling onnxruntime.quantization directly.

Runs, interleaved (A B A B …) in fresh processes, on the same model and calibration data:
  ort-raw   quantize_static / quantize_dynamic on the model as it is
  ort-prep  onnxruntime's recommended flow: quant_pre_process, then quantize_*
  qconvert  `qconvert quantize` (which also pre-processes, checks data and counts nodes)
and prints median wall time, the ratio of qconvert to ort-prep (goal <= 1.10) and to ort-raw,
and each process's peak RSS.

Cases: the two sample models (sub-second jobs, where qconvert's fixed start-up, about 0.1 s of
CLI imports and rendering, shows most) and a BERT-base-width encoder with seeded random weights
(6 layers, hidden 768, 170 MB: a job the size of a real model). Random weights do not matter for
timing; accuracy is measured elsewhere on trained models. With --exports, also two real detectors
that packages ship (ddddocr's YOLO-style common_det at 416x416, PP-OCRv4's text detector from
Paddle2ONNX at 320x320; set-up in bench/exports.py), and with --minilm all-MiniLM-L6-v2 (a trained
BERT encoder, exported by bench/minilm.py in the bench venv), static on 32 samples: the goal there is
qconvert <= 1.25x bare quantize_static (ort-raw).
Usage: python bench/overhead.py [--rounds N] [--quick] [--exports] [--minilm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"

ORT_SCRIPT = """
import sys, numpy as np
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
model, calib, out, prep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if prep:
    quant_pre_process(model, out + ".prep.onnx", skip_optimization=calib == "-", auto_merge=True)
    model = out + ".prep.onnx"
if calib == "-":
    quantize_dynamic(model, out, per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
else:
    class Reader(CalibrationDataReader):
        def __init__(self):
            data = np.load(calib)
            self.it = iter([{k: data[k][i:i + 1] for k in data.files} for i in range(len(data[data.files[0]]))])
        def get_next(self):
            return next(self.it, None)
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
"""


def encoder(path: Path, calib: Path, *, layers: int = 6, hidden: int = 768, seq: int = 64) -> None:
    """A transformer-encoder-shaped graph (self-attention + GELU MLP + LayerNorm per layer) with
    seeded random weights, and 16 calibration samples for it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: int | list[int]) -> str:
        made = helper.make_node(op, inputs, [output], name=output)
        made.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        nodes.append(made)
        return output

    x = "x"
    inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), "ln_scale"))
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(hidden), np.float32), "attn_scale"))
    for i in range(layers):
        q = node("MatMul", [x, weight(f"wq{i}", hidden, hidden)], f"q{i}")
        k = node("MatMul", [x, weight(f"wk{i}", hidden, hidden)], f"k{i}")
        v = node("MatMul", [x, weight(f"wv{i}", hidden, hidden)], f"v{i}")
        kt = node("Transpose", [k], f"kt{i}", perm=[0, 2, 1])
        scores = node("Mul", [node("MatMul", [q, kt], f"qk{i}"), "attn_scale"], f"scores{i}")
        attn = node("MatMul", [node("Softmax", [scores], f"probs{i}", axis=-1), v], f"attn{i}")
        proj = node("MatMul", [attn, weight(f"wo{i}", hidden, hidden)], f"proj{i}")
        h = node("LayerNormalization", [node("Add", [x, proj], f"res1_{i}"), "ln_scale"], f"ln1_{i}", axis=-1)
        up = node("Gelu", [node("MatMul", [h, weight(f"w1{i}", hidden, 4 * hidden)], f"up{i}")], f"gelu{i}")
        down = node("MatMul", [up, weight(f"w2{i}", 4 * hidden, hidden)], f"down{i}")
        x = node("LayerNormalization", [node("Add", [h, down], f"res2_{i}"), "ln_scale"], f"ln2_{i}", axis=-1)
    dims: list[str | int] = ["batch", seq, hidden]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, path)
    np.savez(calib, x=rng.standard_normal((16, seq, hidden)).astype(np.float32))


def _exported_detectors(tmp: Path) -> list[tuple[str, Path, str]]:
    """(label, model, calibration .npz of 32 samples stacked on axis 0) for the detectors bench/exports.py finds."""
    import exports
    import numpy as np

    cases = []
    for path in exports.model_files():
        if path.name in ("common_det.onnx", "ch_PP-OCRv4_det_infer.onnx"):
            rng = np.random.default_rng(0)
            samples = [exports._sample(path, rng) for _ in range(32)]
            calib = tmp / f"{path.stem}.calib.npz"
            np.savez(calib, **{k: np.concatenate([s[k] for s in samples]) for k in samples[0]})
            cases.append((f"export {path.stem[:21]}", path, str(calib)))
    return cases


def _minilm(tmp: Path) -> tuple[str, Path, str]:
    """all-MiniLM-L6-v2 and 32 calibration sentences padded to 128 tokens, stacked on axis 0. Built
    in a child: torch in this process would count in every later child's peak RSS."""
    subprocess.run([sys.executable, __file__, "--build-minilm", str(tmp)], check=True)
    return "export all-MiniLM-L6-v2", tmp / "minilm" / "minilm.onnx", str(tmp / "minilm.calib.npz")


def _build_minilm(tmp: Path) -> None:
    import minilm
    import numpy as np

    _, calib_dir, _ = minilm.prepare(tmp / "minilm", calib=32, eval=1, calib_pad_to=minilm.MAX_TOKENS)
    files = [np.load(f) for f in sorted(calib_dir.glob("*.npz"))]
    np.savez(tmp / "minilm.calib.npz", **{k: np.concatenate([f[k] for f in files]) for k in files[0].files})


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the sample models")
    parser.add_argument("--exports", action="store_true", help="also real detectors from packages (bench/exports.py)")
    parser.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2 (bench/minilm.py)")
    parser.add_argument("--build-encoder", nargs=2, type=Path, metavar=("MODEL", "CALIB"), help=argparse.SUPPRESS)
    parser.add_argument("--build-minilm", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_encoder:
        encoder(*args.build_encoder)
        return
    if args.build_minilm:
        _build_minilm(args.build_minilm)
        return
    qconvert = str(Path(sys.executable).with_name("qconvert"))
    print(f"{'case':28} {'tool':9} {'median s':>9} {'peak MB':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("digits_cnn static", SAMPLES / "digits_cnn.onnx", str(SAMPLES / "digits.calib.npz")),
            ("digits_transformer static", SAMPLES / "digits_transformer.onnx", str(SAMPLES / "digits.calib.npz")),
            ("digits_transformer dynamic", SAMPLES / "digits_transformer.onnx", "-"),
        ]
        if not args.quick:
            big, big_calib = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder.calib.npz"
            # Built in a child: a child forked from a 900 MB parent would report that as its own peak RSS.
            subprocess.run([sys.executable, __file__, "--build-encoder", str(big), str(big_calib)], check=True)
            cases += [("encoder-768x6 static", big, str(big_calib)), ("encoder-768x6 dynamic", big, "-")]
        if args.exports:
            cases += _exported_detectors(Path(tmp))
        if args.minilm:
            cases.append(_minilm(Path(tmp)))
        for label, model, calib in cases:
            out = Path(tmp) / "out.onnx"
            q_cmd = [qconvert, "quantize", str(model), "-o", str(out), "--force"]
            q_cmd += ["--mode", "dynamic"] if calib == "-" else ["--calib", calib]
            commands = {
                "ort-raw": [sys.executable, "-c", ORT_SCRIPT, str(model), calib, str(out), "0"],
                "ort-prep": [sys.executable, "-c", ORT_SCRIPT, str(model), calib, str(out), "1"],
                "qconvert": q_cmd,
            }
            times: dict[str, list[float]] = {k: [] for k in commands}
            peaks: dict[str, float] = dict.fromkeys(commands, 0.0)
            for _ in range(args.rounds):
                for name, cmd in commands.items():
                    seconds, peak = timed(cmd)
                    times[name].append(seconds)
                    peaks[name] = max(peaks[name], peak)
            medians = {k: statistics.median(v) for k, v in times.items()}
            for name in commands:
                ratio = medians["qconvert"] / medians[name]
                print(f"{label:28} {name:9} {medians[name]:9.2f} {peaks[name]:8.0f} {ratio:6.2f}")
            if label.startswith("export"):
                goal = medians["qconvert"] / medians["ort-raw"]
                print(f"{label:28} qconvert / ort-raw = {goal:.2f} (goal <= 1.25) "
                      f"{'OK' if goal <= 1.25 else 'MISSED'}", flush=True)
                continue
            goal = medians["qconvert"] / medians["ort-prep"]
            print(f"{label:28} qconvert / ort-prep = {goal:.2f} (goal <= 1.10) "
                  f"{'OK' if goal <= 1.10 else 'MISSED'}; "
                  f"difference {medians['qconvert'] - medians['ort-prep']:+.2f} s", flush=True)


if __name__ == "__main__":
    main()
