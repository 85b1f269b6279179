"""A model over 2 GB (weights in an external-data sidecar) through quantize, validate and benchmark,
end to end with the installed command, reporting each step's peak resident memory as a ratio to
the model's size.

    .venv/bin/python bench/bigmodel.py [--work DIR] [--gib 2.2] [--keep]

The model is a stack of square MatMul+Relu layers written layer by layer (never whole in memory).
Goal (issue 5): every step peaks well under twice the model size. Also `convert --to fp16` (issue 18):
external data and > 2 GB as everywhere else; and weight-only int4 (issue 17): peak <= 1.5x the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

EXE = Path(sys.executable).with_name("qconvert")
WIDTH = 8192


def build(folder: Path, gib: float) -> Path:
    """Layers of WIDTH x WIDTH float32 weights until the sidecar passes `gib` GiB."""
    layers = int(np.ceil(gib * 2**30 / (WIDTH * WIDTH * 4)))
    model_path = folder / "big.onnx"
    sidecar = folder / "big.onnx.data"
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    with open(sidecar, "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)).astype(np.float32)
            data = w.tobytes()
            f.write(data)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", sidecar.name), ("offset", str(offset)), ("length", str(len(data)))):
                t.external_data.add(key=key, value=value)
            offset += len(data)
            inits.append(t)
            x = "x" if i == 0 else f"r{i - 1}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                              [helper.make_tensor_value_info(f"r{layers - 1}", TensorProto.FLOAT, ["n", WIDTH])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model_path))
    return model_path


_MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=False)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak": peak}))
"""


def run(args: list[str]) -> tuple[float, float, dict[str, object]]:
    """Seconds, peak RSS (bytes) of the largest process of the command (measured in a fresh parent
    so steps do not share a maximum), and the command's JSON output."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(EXE), *args, "--json"], capture_output=True,
                          text=True, check=True)
    seconds = time.perf_counter() - started
    measured = json.loads(proc.stdout)
    if measured["code"] not in (0, 3):
        sys.exit(f"{' '.join(args)} failed ({measured['code']}): {measured['stderr']}")
    return seconds, measured["peak"], json.loads(measured["stdout"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path)
    parser.add_argument("--gib", type=float, default=2.2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="qconvert-big-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = work / "big.onnx"
        if not model.exists():
            build(work, args.gib)
        size = model.stat().st_size + (work / "big.onnx.data").stat().st_size
        print(f"model: {size / 2**30:.2f} GiB in {model} + sidecar")
        out = work / "big.q.onnx"
        data = work / "calib.npz"
        np.savez(data, x=np.random.default_rng(1).standard_normal((8, WIDTH)).astype(np.float32))
        steps = {
            "quantize static": ["quantize", str(model), "-o", str(out), "--calib", str(data), "--force"],
            "validate": ["validate", str(model), str(out), "--data", str(data)],
            "benchmark": ["benchmark", str(model), str(out), "--runs", "5"],
            "quantize int4": ["quantize", str(model), "-o", str(work / "big.w4.onnx"), "--mode", "weight-only",
                              "--force"],
            "convert fp16": ["convert", str(model), "-o", str(work / "big.fp16.onnx"), "--calib", str(data),
                             "--force"],
            "validate fp16": ["validate", str(model), str(work / "big.fp16.onnx"), "--data", str(data)],
        }
        for name, step in steps.items():
            seconds, peak, result = run(step)
            extra = ""
            if name.startswith("validate"):
                extra = f" · cosine {result['outputs'][0]['mean_cosine']:.4f}"  # type: ignore[index]
            print(f"{name:16s} {seconds:6.1f} s · peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f}× the model"
                  f"{extra}")
        quantized = sum(p.stat().st_size for p in work.glob("big.q.onnx*"))
        print(f"quantized: {quantized / 2**30:.2f} GiB ({size / quantized:.2f}× smaller)")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
