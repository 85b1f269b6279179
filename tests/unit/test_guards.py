"""Guards that onnxruntime leaves to `assert` (gone under `python -O`): non-finite calibration ranges
and quantization scales are refused with a message, never written into a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.errors import ExitCode, RuntimeFailure
from qconvert.quantization.adapter import reads_calibration_cache as _reads_calibration_cache
from qconvert.quantization.job import _check_scales
from tests import models
from tests.corpus import refused


def _infinite_activation() -> onnx.ModelProto:
    """Log(x * 0) = -inf feeds a MatMul: its input range cannot be calibrated."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["x", "zero"], ["z"], name="mul"),
             helper.make_node("Log", ["z"], ["l"], name="log"),
             helper.make_node("MatMul", ["l", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
         numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.skipif(not _reads_calibration_cache(), reason="this onnxruntime calibrates by itself (1.24)")
def test_a_model_computing_infinities_is_refused_before_quantizing(tmp_path: Path) -> None:
    model = _infinite_activation()
    src = models.save(model, tmp_path / "inf.onnx")
    calib = models.write_npz(model, tmp_path / "c.npz", samples=4)
    err = refused(["quantize", src, "-o", tmp_path / "q.onnx", "--calib", calib], folder=tmp_path,
                  code=ExitCode.BAD_INPUT, message="no finite value")
    assert "'l'" in err


@pytest.mark.parametrize("scale", [np.nan, np.inf, 0.0, -1.0])
def test_invalid_scales_are_refused(tmp_path: Path, scale: float) -> None:
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")
    graph = helper.make_graph(
        [dq], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.zeros(4, np.uint8), "q"), numpy_helper.from_array(np.float32(scale), "s"),
         numpy_helper.from_array(np.uint8(0), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(RuntimeFailure, match="invalid scale 's'"):
        _check_scales(model, tmp_path / "m.onnx")
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.float32(0.5), "s"))
    _check_scales(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_an_interrupt_while_a_temporary_is_made_leaves_nothing(kind: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing right after the temporary is made: it is still removed."""
    import os
    import signal
    from pathlib import Path as RealPath

    from qconvert.model import files as model
    from qconvert.model.files import staging_dir, write_atomically

    if kind == "folder":
        real_mkdir = RealPath.mkdir

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(RealPath, "mkdir", mkdir)
    else:
        real_close = os.close

        def close(fd: int) -> None:
            real_close(fd)
            os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(model.os, "close", close)
    with pytest.raises(KeyboardInterrupt):
        if kind == "folder":
            with staging_dir(tmp_path / "q.onnx"):
                pass
        else:
            write_atomically(tmp_path / "r.json", "{}")
    assert list(tmp_path.iterdir()) == []
