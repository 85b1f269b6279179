"""FP32 against quantized latency, measured side by side in one process (A B A B …).

Cases: the sample models (static and dynamic) and ResNet-50 from the Caffe2 model zoo shipped in
the onnx wheel (seeded random weights: latency does not depend on their values), quantized with
qconvert's defaults. One intra-op thread, batch 1, medians of interleaved runs.
With --ep the models run on that execution provider (e.g. `.venv-openvino/bin/python
bench/speedup.py --ep openvino`), and the share of each quantized model the provider took is shown.
Usage: python bench/speedup.py [--runs N] [--quick] [--ep NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qconvert import DataConfig, Mode, QuantizeConfig, input_specs, load_model, open_data, quantize  # noqa: E402
from qconvert.config import (  # noqa: E402
    BenchmarkConfig,
    EPConfig,
)
from qconvert.measurement.benchmarking import batch_feeds, benchmark  # noqa: E402
from tests import models  # noqa: E402

SAMPLES = REPO / "sample_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="only the sample models")
    parser.add_argument("--ep", default="cpu", help="execution provider (see `qconvert providers`)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calib = str(SAMPLES / "digits.calib.npz")
        cases: list[tuple[str, Path, str | None, Mode]] = [
            ("digits_cnn static", SAMPLES / "digits_cnn.onnx", calib, Mode.STATIC),
            ("digits_transformer static", SAMPLES / "digits_transformer.onnx", calib, Mode.STATIC),
            ("digits_transformer dynamic", SAMPLES / "digits_transformer.onnx", None, Mode.DYNAMIC),
        ]
        if not args.quick:
            resnet = models.save(models.legacy_zoo("resnet50"), folder / "resnet50.onnx")
            cases.append(("resnet50 (caffe2) static", resnet, "synthetic", Mode.STATIC))
        print(f"{'case':28} {'fp32 p50 ms':>12} {'int8 p50 ms':>12} {'speedup':>8} {'size':>7} {'on ' + args.ep:>12}",
              flush=True)
        for label, fp32, source, mode in cases:
            specs = input_specs(load_model(fp32).proto)
            data = open_data(DataConfig(source, max_samples=32), specs) if source else None
            out = folder / f"{fp32.stem}.{mode.value}.onnx"
            q = quantize(fp32, out, data, config=QuantizeConfig(mode=mode), force=True)
            feeds = batch_feeds(open_data(DataConfig(source or "synthetic", max_samples=1), specs), 1)
            config = BenchmarkConfig(runs=args.runs, warmup=20, ep=EPConfig(provider=args.ep))
            base, quant = benchmark([fp32, out], feeds, config=config).models
            share = "-" if quant.placement is None else f"{quant.placement.share() * 100:.0f}%"
            print(f"{label:28} {base.p50_ms:12.3f} {quant.p50_ms:12.3f} {quant.speedup:7.2f}x "
                  f"{q.size_ratio:6.2f}x {share:>12}", flush=True)


if __name__ == "__main__":
    main()
