"""Same inputs, options and library versions give a byte-identical model, whatever the process,
hash seed, CPU count or working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import models

EXE = Path(sys.executable).with_name("qconvert")


def _quantize(cwd: Path, src: Path, out: Path, args: list[str], *, seed: str, cpus: set[int]) -> None:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    subprocess.run([str(EXE), "quantize", str(src), "-o", str(out), *args], cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, cpus))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
@pytest.mark.parametrize("args", [["--calib", "{calib}", "--method", "entropy"],
                                  ["--calib", "{calib}", "--method", "percentile", "--per-tensor"],
                                  ["--mode", "dynamic"]], ids=["entropy", "percentile", "dynamic"])
def test_outputs_are_byte_identical_across_processes(tmp_path: Path, args: list[str]) -> None:
    model = models.mlp(hidden=512)
    src = models.save(model, tmp_path / "m.onnx", external=True)
    calib = models.write_npz(model, tmp_path / "c.npz", samples=32, seed=1)
    argv = [a.format(calib=calib) for a in args]
    cpus = sorted(os.sched_getaffinity(0))
    runs = []
    for i, (seed, chosen) in enumerate([("1", set(cpus)), ("12345", {cpus[-1]})]):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        _quantize(folder if i else tmp_path, src, folder / "q.onnx", argv, seed=seed, cpus=chosen)
        runs.append({p.name: p.read_bytes() for p in folder.iterdir()})
    assert runs[0] == runs[1]
    assert len(runs[0]) == 2, "the quantized weights went to a sidecar, which is compared too"
