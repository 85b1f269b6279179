"""Real third-party ONNX exports that packages on the package index ship, through `qconvert quantize`.

The suite builds its models itself; these come from other exporters: Paddle2ONNX (RapidOCR's
PP-OCR det/rec/cls), PyTorch 1.9 to 2.11 and spox (Silero VAD, with its compute in If branches),
PyTorch (ddddocr's OCR and detector). For each model and mode (static on 16 calibration samples,
dynamic): whether it quantizes, how many nodes, and the worst output's mean cosine to FP32 on 16
held-out samples. The inputs are random but of the right kind (images in [0, 1], audio noise, a
sample rate of 16000, zero recurrent state), so a cosine is a smoke figure, not an accuracy claim.

Set-up (the packages are used for their files only, so none of their dependencies is needed):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e .
    .venv-bench/bin/pip install --no-deps silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4 ddddocr==1.6.1
Usage: .venv-bench/bin/python bench/exports.py [--only NAME,...] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGES = ("silero_vad", "rapidocr_onnxruntime", "ddddocr")
# Sizes for dynamic dims, by model file: the shapes the package itself feeds.
DIMS = {
    "ch_PP-OCRv4_det_infer.onnx": (1, 3, 320, 320), "ch_PP-OCRv4_rec_infer.onnx": (1, 3, 48, 320),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192), "common.onnx": (1, 1, 64, 256),
    "common_old.onnx": (1, 1, 64, 256),
}
AUDIO = {"silero_vad_16k_sequence.onnx": (4, 576), "silero_vad_openvino_16k.onnx": (1, 576)}
SAMPLES = 16


def model_files() -> list[Path]:
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)  # the package's folder, without importing it
        if spec is None or spec.origin is None:
            print(f"{package} is not installed: see the set-up in {__file__}", file=sys.stderr)
            continue
        found += sorted(Path(spec.origin).parent.rglob("*.onnx"))
    return found


def _sample(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs read with onnx itself, so the bench runs on versions of qconvert that refuse the model."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    sample = {}
    for value in (v for v in graph.input if v.name not in inits):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                     for d in value.type.tensor_type.shape.dim)
        if value.name == "sr":
            sample[value.name] = np.array(16000, np.int64)
        elif value.name in ("state", "h", "c"):
            sample[value.name] = np.zeros(dims, dtype)
        elif len(dims) == 2:  # audio frames
            shape = AUDIO.get(path.name, (1, 512))
            sample[value.name] = (rng.standard_normal(shape) * 0.1).astype(dtype)
        else:
            shape = DIMS.get(path.name, dims)
            sample[value.name] = rng.uniform(0.0, 1.0, shape).astype(dtype)
    return sample


def _data(path: Path, folder: Path, seed: int) -> Path:
    """SAMPLES samples as one .npz file per sample (shapes may differ from the declared ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(SAMPLES):
        np.savez(folder / f"{i:03d}.npz", **_sample(path, rng))
    return folder


def _qconvert(*args: object) -> tuple[int, dict[str, object], float]:
    exe = Path(sys.executable).with_name("qconvert")
    start = time.perf_counter()
    run = subprocess.run([str(exe), "-q", *map(str, args), "--json"], capture_output=True, text=True, timeout=1800,
                         check=False)
    seconds = time.perf_counter() - start
    try:
        payload = json.loads(run.stdout)
    except json.JSONDecodeError:
        payload = {"message": (run.stderr.strip().splitlines() or ["no output"])[-1]}
    return run.returncode, payload, seconds


def measure(path: Path, work: Path) -> list[str]:
    calib, evaluation = _data(path, work / "calib", 1), _data(path, work / "eval", 2)
    cells = []
    for mode, extra in (("static", ("--calib", calib)), ("dynamic", ("--mode", "dynamic"))):
        out = work / f"{mode}.onnx"
        code, q, seconds = _qconvert("quantize", path, "-o", out, "--force", *extra)
        if code:
            cells.append(f"refused (exit {code}): {str(q.get('message'))[:90]}")
            continue
        nodes = q["nodes"]
        assert isinstance(nodes, dict)
        code, v, _ = _qconvert("validate", path, out, "--data", evaluation)
        outputs = v.get("outputs") if isinstance(v.get("outputs"), list) else []
        cosines = [o.get("mean_cosine") for o in outputs if isinstance(o, dict)]  # type: ignore[union-attr]
        worst = min((c for c in cosines if isinstance(c, float | int)), default=None)
        shown = "—" if worst is None else f"{worst:.4f}"
        cells.append(f"{nodes['quantized']}/{nodes['candidates']} nodes, cosine {shown}, {seconds:.1f} s"
                     + ("" if code == 0 else f" (validate exit {code}: {str(v.get('message'))[:60]})"))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model file names")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    files = [f for f in model_files() if not only or f.name in only]
    work = args.work or Path(tempfile.mkdtemp(prefix="qconvert-exports-"))
    quantized = {"static": 0, "dynamic": 0}
    print(f"{'model':40} | static | dynamic")
    for path in files:
        cells = measure(path, work / path.stem)
        for mode, cell in zip(("static", "dynamic"), cells, strict=True):
            quantized[mode] += not cell.startswith("refused")
        print(f"{path.parent.name + '/' + path.name:40} | {cells[0]} | {cells[1]}", flush=True)
    print(f"quantized: static {quantized['static']} of {len(files)}, dynamic {quantized['dynamic']} of {len(files)}")


if __name__ == "__main__":
    main()
