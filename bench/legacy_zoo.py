"""All nine Caffe2-era model-zoo exports shipped in the onnx wheel, through `qconvert quantize`.

Weights are seeded random (tests/models.py: legacy_zoo) so the logits mean something; the graph is
the exporter's (IR 3, opset 9, initializers as inputs, node-produced weights). For each model and
mode: wall time and peak RSS of the qconvert process, nodes quantized, size ratio, and the cosine
of the quantized logits to FP32 on a held-out random input.
Usage: python bench/legacy_zoo.py [--models a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import models  # noqa: E402

NAMES = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]


def build(folder: Path, names: list[str]) -> None:
    """Write each model and its held-out input (run in a child process: see main)."""
    for name in names:
        proto = models.legacy_zoo(name)
        models.save(proto, folder / f"{name}.onnx")
        np.savez(folder / f"{name}.input.npz", **models.inputs_for(proto, batch=1, seed=3))


def cosine_to_fp32(folder: Path, name: str, quantized: Path) -> float:
    with np.load(folder / f"{name}.input.npz") as data:
        feeds = {k: data[k] for k in data.files}
    ref = models.run(folder / f"{name}.onnx", feeds)[0].ravel().astype(np.float64)
    got = models.run(quantized, feeds)[0].ravel().astype(np.float64)
    return float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.models.split(",")
    if args.build:
        build(args.build, names)
        return
    qconvert = str(Path(sys.executable).with_name("qconvert"))
    rows: list[tuple[str, str, Path, dict[str, Any], float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Models are built, and outputs compared, outside this process's quantize phase: a child
        # forked from a parent holding hundreds of MB reports that as its own peak RSS.
        subprocess.run([sys.executable, __file__, "--models", args.models, "--build", tmp], check=True)
        for name in names:
            for mode in ("static", "dynamic"):
                out = folder / f"{name}.{mode}.onnx"
                extra = ["--calib", "synthetic", "--calib-samples", "8"] if mode == "static" else ["--mode", "dynamic"]
                stdout, stderr = folder / "stdout", folder / "stderr"
                start = time.perf_counter()
                with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
                    proc = subprocess.Popen([qconvert, "quantize", str(folder / f"{name}.onnx"), "-o", str(out),
                                             "--json", *extra], stdout=out_file, stderr=err_file)
                    _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - start
                if os.waitstatus_to_exitcode(status) != 0:
                    print(f"{name:14} {mode:8} FAILED: {stderr.read_text().strip().splitlines()[-1:]}", flush=True)
                    continue
                rows.append((name, mode, out, json.loads(stdout.read_text()), seconds, usage.ru_maxrss / 1024))
        print(f"{'model':14} {'mode':8} {'MB fp32':>8} {'seconds':>8} {'peak MB':>8} {'quantized':>10} "
              f"{'smaller':>8} {'cosine':>8}")
        for name, mode, out, result, seconds, peak in rows:
            done = sum(c["quantized"] for c in result["op_types"].values())
            total = sum(c["candidates"] for c in result["op_types"].values())
            print(f"{name:14} {mode:8} {result['size']['before_bytes'] / 1e6:8.1f} {seconds:8.1f} {peak:8.0f} "
                  f"{f'{done}/{total}':>10} {result['size']['ratio']:7.2f}x {cosine_to_fp32(folder, name, out):8.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
