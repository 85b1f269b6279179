"""examples/Makefile, run by make with the installed qconvert: it quantizes, gates and benchmarks
the sample CNN, redoes only what changed, and a missed gate fails the build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MAKE = shutil.which("make")
EXE = Path(sys.executable).with_name("qconvert")
pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")


def _make(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No timing asserts: the speed gate is set where no machine can miss it; RUNS keeps it quick.
    command = [str(MAKE), "--no-print-directory", "-C", str(REPO / "examples"), f"QCONVERT={EXE}", f"OUT={out}",
               "RUNS=5", "MIN_SPEEDUP=0.01", "CALIB_SAMPLES=32", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}  # not a sub-make of ours
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)


def test_examples_build_gate_and_fail_on_a_missed_gate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = _make(out, "all", "recipe")
    assert built.returncode == 0, built.stdout + built.stderr
    model = out / "digits_cnn.int8.onnx"
    for name in ("digits_cnn.int8.onnx", "digits_cnn.validate.json", "digits_cnn.benchmark.json",
                 "digits_cnn.recipe.int8.onnx"):
        assert (out / name).is_file(), name
    assert json.loads((out / "digits_cnn.validate.json").read_text())["passed"] is True
    recipe = json.loads((out / "digits_cnn.recipe.json").read_text())
    assert recipe["command"] == "pipeline" and recipe["benchmark"][0]["models"][1]["runs"] == 5

    stamp = model.stat().st_mtime_ns
    again = _make(out, "all", "recipe")
    assert again.returncode == 0 and "qconvert" not in again.stdout, again.stdout  # nothing left to do

    missed = _make(out, "MIN_SQNR=200")
    assert missed.returncode != 0, missed.stdout
    assert "min_sqnr" in missed.stderr and "Error 3" in missed.stderr
    assert model.stat().st_mtime_ns == stamp, "a new threshold re-runs its gate, not the quantization"
    assert not (out / "digits_cnn.validate.json").exists(), "the failed gate's report is removed"

    assert _make(out).returncode == 0, "back to the default thresholds, the gate passes again"
