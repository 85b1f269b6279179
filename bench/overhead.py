"""qconvert's overhead over calling onnxruntime.quantization directly.

Runs, interleaved (A B A B …) in fresh processes, on the same model and calibration data:
  ort-raw   quantize_static / quantize_dynamic on the model as it is
  ort-prep  onnxruntime's recommended flow: quant_pre_process, then quantize_*
  qconvert  `qconvert quantize` (which also pre-processes, checks data and counts nodes)
and prints median wall time, the ratio of qconvert to ort-prep (goal <= 1.10) and to ort-raw,
and each process's peak RSS. Usage: python bench/overhead.py [--rounds N]
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
    args = parser.parse_args()
    qconvert = str(Path(sys.executable).with_name("qconvert"))
    cases = [
        ("digits_cnn static", SAMPLES / "digits_cnn.onnx", str(SAMPLES / "digits.calib.npz")),
        ("digits_transformer dynamic", SAMPLES / "digits_transformer.onnx", "-"),
    ]
    print(f"{'case':28} {'tool':9} {'median s':>9} {'peak MB':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
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
            goal = medians["qconvert"] / medians["ort-prep"]
            print(f"{label:28} qconvert / ort-prep = {goal:.2f} (goal <= 1.10) "
                  f"{'OK' if goal <= 1.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
