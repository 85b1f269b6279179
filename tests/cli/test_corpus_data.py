"""The bad-data corpus: hostile or broken calibration/evaluation data through the real CLI.

Every case is built small in tmp_path, and must end in exit 2 with a one-line `error:` naming the
file, no traceback, no MemoryError, nothing on stdout and every file under tmp_path untouched.
Limits are lowered with monkeypatch where the real ones would need gigabytes."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from qconvert.calibration import images, npyfile
from qconvert.cli.app import app
from qconvert.errors import ExitCode
from tests import models
from tests.corpus import refused
from tests.unit.test_data_safety import encrypted, npy_bytes, saved, tensor_bytes, zip_bytes

F32 = "<f4"


def _x(n: int = 4, cols: int = 16, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, cols)).astype(dtype)


def _npy_folder(folder: Path, **files: bytes) -> Path:
    data = folder / "data"
    data.mkdir()
    for name, content in files.items():
        (data / f"{name}.npy").write_bytes(content)
    return data


def _file(folder: Path, name: str, content: bytes) -> Path:
    (folder / name).write_bytes(content)
    return folder / name


def _npz(folder: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    return _file(folder, "data.npz", zip_bytes(members, compression=compression))


def _images(folder: Path, name: str, content: bytes) -> Path:
    data = folder / "images"
    data.mkdir()
    (data / name).write_bytes(content)
    return data


def _png(size: int = 32, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _test_data(folder: Path, tensor: TensorProto | bytes) -> Path:
    data_set = folder / "testdata" / "test_data_set_0"
    data_set.mkdir(parents=True)
    (data_set / "input_0.pb").write_bytes(tensor if isinstance(tensor, bytes) else tensor_bytes(tensor))
    return folder / "testdata"


def _forged(shape: tuple[int, ...], data: bytes = bytes(8), descr: str = F32) -> bytes:
    return npy_bytes({"descr": descr, "fortran_order": False, "shape": shape}, data)


def _with_nan(value: float) -> bytes:
    x = _x(6)
    x[4, 7] = value
    return saved(x)


def _bad_crc() -> bytes:
    raw = bytearray(zip_bytes({"x.npy": saved(_x(64))}))
    raw[200] ^= 0xFF  # inside the member's data
    return bytes(raw)


def _tensor_claiming_more() -> TensorProto:
    tensor = numpy_helper.from_array(_x(1), "x")
    tensor.dims[:] = [2**30, 16]
    return tensor


def _external_tensor() -> TensorProto:
    tensor = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[1, 16], data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    return tensor


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]  # writes the data under tmp_path, returns the --calib / --data source
    message: str
    model: str = "mlp"  # mlp: x [batch, 16]; cnn: x [batch, 3, 16, 16]
    limits: dict[str, int] = field(default_factory=dict)  # "module.NAME": lowered value


CASES: dict[str, Case] = {
    # --- a folder of .npy files (memory-mapped) ---
    "npy-header-claims-8-TiB": Case(lambda d: _npy_folder(d, x=_forged((2**37, 16))),
                                    "the header claims shape [137438953472, 16] of float32 (8.0 TiB) but 8 bytes"),
    "npy-truncated": Case(lambda d: _npy_folder(d, x=saved(_x())[:-10]), "(256 bytes) but 246 bytes of data follow"),
    "npy-trailing-bytes": Case(lambda d: _npy_folder(d, x=saved(_x()) + b"junk"), "but 260 bytes of data follow"),
    "npy-object-dtype": Case(lambda d: _npy_folder(d, x=saved(np.array([[1], "a"], dtype=object),
                                                              allow_pickle=True)), "qconvert never unpickles data"),
    "npy-is-a-pickle": Case(lambda d: _npy_folder(d, x=b"\x80\x04\x95\x05\x00cos\nsystem\n."),
                            "is not a .npy array"),
    "npy-unknown-version": Case(lambda d: _npy_folder(d, x=b"\x93NUMPY\x09\x00" + bytes(20)),
                                "unknown .npy format version 9.0"),
    "npy-header-length-4-GiB": Case(lambda d: _npy_folder(d, x=npy_bytes("{}", version=(2, 0), length=2**32 - 1)),
                                    "header claims 4294967295 bytes, more than the 10000"),
    "npy-code-in-header": Case(lambda d: _npy_folder(d, x=npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').system('true')}", bytes(256))),
        "unreadable .npy header"),
    "npy-negative-dim": Case(lambda d: _npy_folder(d, x=_forged((-4, 16), bytes(256))), "invalid shape (-4, 16)"),
    "npy-unknown-dtype": Case(lambda d: _npy_folder(d, x=_forged((4, 16), bytes(256), descr="<q9")),
                              "invalid dtype '<q9'"),
    "npy-over-the-array-limit": Case(lambda d: _npy_folder(d, x=saved(_x())), "qconvert reads per array",
                                     limits={"npyfile.MAX_ARRAY_BYTES": 255}),
    "npy-sample-counts-differ": Case(lambda d: _npy_folder(d, x=saved(_x(4)), mask=saved(_x(3))),
                                     "must share a non-empty axis 0"),
    # --- one .npz archive ---
    "npz-non-npy-member": Case(lambda d: _npz(d, {"x.npy": saved(_x()), "run.sh": b"rm -rf /"}),
                               "member 'run.sh' is not a .npy array"),
    "npz-zip-bomb": Case(lambda d: _npz(d, {"x.npy": saved(np.zeros((2**18, 16), np.float32))},
                                        zipfile.ZIP_DEFLATED), "(a zip bomb?)",
                         limits={"npyfile.ZIP_RATIO_MIN_BYTES": 2**20}),
    "npz-member-over-the-limit": Case(lambda d: _npz(d, {"x.npy": saved(_x(1024))}, zipfile.ZIP_DEFLATED),
                                      "member 'x.npy' unpacks to 64.1 KiB, more than the 1.0 KiB",
                                      limits={"npyfile.MAX_ARRAY_BYTES": 1024}),
    "npz-total-over-the-limit": Case(lambda d: _npz(d, {"x.npy": saved(_x(64)), "y.npy": saved(_x(64))}),
                                     "unpack to more than 5.9 KiB in total", limits={"npyfile.MAX_NPZ_BYTES": 6000}),
    "npz-forged-member-header": Case(lambda d: _npz(d, {"x.npy": _forged((2**37, 16))}),
                                     "member 'x.npy': the header claims shape [137438953472, 16]"),
    "npz-truncated-member": Case(lambda d: _npz(d, {"x.npy": saved(_x())[:-64]}), "but 192 bytes of data follow"),
    "npz-object-member": Case(lambda d: _npz(d, {"x.npy": saved(np.array([None] * 4), allow_pickle=True)}),
                              "holds Python objects"),
    "npz-encrypted-member": Case(lambda d: _file(d, "data.npz", encrypted(zip_bytes({"x.npy": saved(_x())}))),
                                 "member 'x.npy' is encrypted"),
    "npz-corrupt-zip": Case(lambda d: _file(d, "data.npz", b"PK\x03\x04" + bytes(range(256)) * 4),
                            "cannot read"),
    "npz-bad-crc": Case(lambda d: _file(d, "data.npz", _bad_crc()), "Bad CRC-32"),
    "npz-empty-archive": Case(lambda d: _npz(d, {}), "holds no arrays"),
    "npz-empty-file": Case(lambda d: _file(d, "data.npz", b""), "File is not a zip file"),
    "npz-bare-npy": Case(lambda d: _file(d, "data.npz", saved(_x())), "holds a bare array, not a .npz archive"),
    "npz-shape-mismatch": Case(lambda d: _npz(d, {"x.npy": saved(_x(4, 15))}), "'x': dim 1 is 15, model expects 16"),
    "npz-wrong-dtype": Case(lambda d: _npz(d, {"x.npy": saved(_x(dtype=np.float64))}),
                            "'x': dtype float64, model expects float32"),
    "npz-wrong-rank": Case(lambda d: _npz(d, {"x.npy": saved(np.zeros((4, 2, 2, 16), np.float32))}),
                           "model expects rank 2"),
    "npz-wrong-name": Case(lambda d: _npz(d, {"input.npy": saved(_x())}), "missing input 'x'"),
    "npz-nan": Case(lambda d: _npz(d, {"x.npy": _with_nan(np.nan)}), "sample 4, input 'x': 1 NaN/Inf value(s)"),
    "npz-inf": Case(lambda d: _npz(d, {"x.npy": _with_nan(-np.inf)}), "sample 4, input 'x': 1 NaN/Inf value(s)"),
    "npz-folder-with-a-forged-file": Case(lambda d: _file(_npy_folder(d), "s0.npz", zip_bytes(
        {"x.npy": _forged((2**40,))})).parent, "s0.npz member 'x.npy': the header claims shape [1099511627776]"),
    # --- image folders (the CNN: one [batch, 3, 16, 16] input) ---
    "image-over-the-pixel-limit": Case(lambda d: _images(d, "a.png", _png(64)), "64×64 = 4096 pixels, more than",
                                       model="cnn", limits={"images.MAX_IMAGE_PIXELS": 4095}),
    "image-pillow-decompression-bomb": Case(lambda d: _images(d, "a.png", _png(64)), "too large to decode safely",
                                            model="cnn", limits={"PIL.MAX_IMAGE_PIXELS": 3000}),
    "image-truncated-png": Case(lambda d: _images(d, "a.png", _png()[:900]), "image file is truncated", model="cnn"),
    "image-truncated-jpeg": Case(lambda d: _images(d, "a.jpg", _png(fmt="JPEG")[:700]), "image file is truncated",
                                 model="cnn"),
    "image-text-named-png": Case(lambda d: _images(d, "a.png", b"just some text\n"), "cannot identify image file",
                                 model="cnn"),
    "image-postscript-named-png": Case(lambda d: _images(d, "a.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: "
                                                                     b"0 0 10 10\nshowpage\n"),
                                       "cannot identify image file", model="cnn"),
    # --- ONNX test-data folders ---
    "pb-dims-claim-more-than-its-bytes": Case(lambda d: _test_data(d, _tensor_claiming_more()),
                                              "dims [1073741824, 16] of FLOAT need 68719476736 bytes of raw_data, "
                                              "the file holds 64"),
    "pb-typed-values-short": Case(lambda d: _test_data(d, TensorProto(name="x", data_type=TensorProto.FLOAT,
                                                                      dims=[1, 16], float_data=[1.0] * 3)),
                                  "need 16 values in float_data, the file holds 3"),
    "pb-garbage": Case(lambda d: _test_data(d, b"\xff\xff\xff\xff garbage"), "not a TensorProto"),
    "pb-external-data": Case(lambda d: _test_data(d, _external_tensor()), "its data is in an external file"),
    "pb-no-element-type": Case(lambda d: _test_data(d, b""), "element type UNDEFINED"),
    "pb-string-tensor": Case(lambda d: _test_data(d, TensorProto(name="x", data_type=TensorProto.STRING, dims=[1],
                                                                 string_data=[b"a"])), "element type STRING"),
}


def _lower(monkeypatch: pytest.MonkeyPatch, limits: dict[str, int]) -> None:
    modules = {"npyfile": npyfile, "images": images, "PIL": Image}
    for target, value in limits.items():
        module, name = target.split(".")
        monkeypatch.setattr(modules[module], name, value)


def _model(tmp_path: Path, kind: str) -> Path:
    return models.save(models.conv_mlp() if kind == "cnn" else models.mlp(), tmp_path / f"{kind}.onnx")


@pytest.mark.parametrize("name", list(CASES))
def test_quantize_refuses_bad_calibration_data(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    model = _model(tmp_path, case.model)
    source = case.build(tmp_path)
    _lower(monkeypatch, case.limits)
    err = refused(["quantize", model, "-o", tmp_path / "out.onnx", "--calib", source], folder=tmp_path,
                  code=ExitCode.BAD_INPUT, message=case.message)
    assert str(source) in err.splitlines()[0] or "data.npz" in err, "the error names the file"
    assert "hint:" in err and "MemoryError" not in err


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("quantized")
    fp32 = models.save(models.mlp(), folder / "mlp.onnx")
    result = CliRunner().invoke(app, ["quantize", str(fp32), "-o", str(folder / "mlp.int8.onnx"), "--mode", "dynamic"])
    assert result.exit_code == 0, result.stderr
    return fp32, folder / "mlp.int8.onnx"


VALIDATE_CASES = ["npy-header-claims-8-TiB", "npz-zip-bomb", "npz-forged-member-header", "npz-nan",
                  "pb-dims-claim-more-than-its-bytes", "npz-bad-crc"]


@pytest.mark.parametrize("name", VALIDATE_CASES)
def test_validate_refuses_bad_evaluation_data(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              quantized: tuple[Path, Path]) -> None:
    case = CASES[name]
    fp32, quant = (Path(shutil.copy(path, tmp_path / path.name)) for path in quantized)
    source = case.build(tmp_path)
    _lower(monkeypatch, case.limits)
    refused(["validate", fp32, quant, "--data", source], folder=tmp_path, code=ExitCode.BAD_INPUT,
            message=case.message)


def test_the_nonfinite_hint_names_the_flag(tmp_path: Path) -> None:
    source = CASES["npz-nan"].build(tmp_path)
    err = refused(["quantize", _model(tmp_path, "mlp"), "-o", tmp_path / "out.onnx", "--calib", source],
                  folder=tmp_path, code=ExitCode.BAD_INPUT, message="NaN/Inf")
    assert err.splitlines()[0] == f"error: {source}: sample 4, input 'x': 1 NaN/Inf value(s)"
    assert "--allow-nonfinite" in err.splitlines()[-1]


@pytest.mark.parametrize("command", ["quantize", "validate"])
def test_allow_nonfinite_gets_past_the_data_check(command: str, tmp_path: Path,
                                                  quantized: tuple[Path, Path]) -> None:
    source = CASES["npz-nan"].build(tmp_path)
    fp32, quant = quantized
    args = (["quantize", fp32, "-o", tmp_path / "out.onnx", "--calib", source] if command == "quantize"
            else ["validate", fp32, quant, "--data", source])
    result = CliRunner().invoke(app, [*map(str, args), "--allow-nonfinite"])
    assert "NaN/Inf value(s)" not in result.stderr and "Traceback" not in result.stderr
    assert result.exit_code == 0, result.stderr
    if command == "quantize":
        assert (tmp_path / "out.onnx").is_file()
