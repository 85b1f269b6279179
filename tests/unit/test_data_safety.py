"""The defensive readers for untrusted data: .npy headers, .npz archives, images and TensorProto files
are checked against the bytes actually present before anything is allocated or decoded.

The byte builders here (`npy_bytes`, `zip_bytes`, `tensor_bytes`) are shared with the CLI corpus
(tests/cli/test_corpus_data.py) and the fuzz test (tests/unit/test_fuzz_data.py)."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image, ImageFile

from qconvert.calibration import CalibrationData, npyfile, open_data
from qconvert.calibration.testdata import read_tensor
from qconvert.config import DataConfig
from qconvert.errors import DataError
from qconvert.model.loading import TensorSpec

MAGIC = b"\x93NUMPY"
F32 = np.dtype(np.float32)
VEC = [TensorSpec("x", F32, ("batch", 16))]


def npy_bytes(header: dict[str, object] | str, data: bytes = b"", *, version: tuple[int, int] = (1, 0),
              length: int | None = None) -> bytes:
    """A .npy file with any header (a dict, or raw text) and any data: what a forger can write.
    `length` overrides the header-length field."""
    text = header if isinstance(header, str) else repr(header)
    prefix = 10 if version == (1, 0) else 12
    text += " " * (-(len(text) + prefix + 1) % 64) + "\n"
    raw = text.encode("utf8" if version >= (3, 0) else "latin1", errors="replace")
    size = len(raw) if length is None else length
    packed = struct.pack("<H", size) if version == (1, 0) else struct.pack("<I", size)
    return MAGIC + bytes(version) + packed + raw + data


def saved(array: np.ndarray, **kwargs: object) -> bytes:
    """`array` as numpy.save writes it."""
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def encrypted(zipped: bytes) -> bytes:
    """`zipped` with the "encrypted" flag set in its central directory (zipfile cannot write it)."""
    raw = bytearray(zipped)
    at = raw.index(b"PK\x01\x02") + 8
    raw[at] |= 0x1
    return bytes(raw)


def tensor_bytes(tensor: TensorProto) -> bytes:
    return bytes(tensor.SerializeToString())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- .npy headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(24, dtype=np.int64).reshape(2, 3, 4)),
    np.array([[True, False]]),
    np.arange(6, dtype=">f8").reshape(3, 2),
    np.zeros((2, 0, 3), np.float32),
    np.array(3.5, np.float16),
    np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.array(["ab", "c"]),
], ids=["f32", "fortran", "bool", "big-endian", "empty", "scalar", "structured", "unicode"])
def test_valid_arrays_read_exactly_as_numpy_does(tmp_path: Path, array: np.ndarray) -> None:
    npy = _write(tmp_path / "a.npy", saved(array))
    npz = tmp_path / "a.npz"
    np.savez_compressed(npz, a=array)
    for read in (npyfile.load_npy(npy), npyfile.read_npz(npz)["a"]):
        assert read.dtype == array.dtype and read.shape == array.shape
        assert read.tobytes() == array.tobytes()


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_header_versions_two_and_three(tmp_path: Path, version: tuple[int, int]) -> None:
    array = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = {"descr": "<f4", "fortran_order": False, "shape": (2, 4)}
    path = _write(tmp_path / "a.npy", npy_bytes(header, array.tobytes(), version=version))
    np.testing.assert_array_equal(npyfile.load_npy(path), array)


def test_python2_long_ints_in_a_header_are_read() -> None:
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 4L), }"
    header = npyfile.read_npy_header(io.BytesIO(npy_bytes(text, bytes(32))), "a.npy")
    assert header.shape == (2, 4) and header.nbytes == 32


def test_a_forged_header_is_refused_before_any_allocation(tmp_path: Path) -> None:
    # 136 bytes asking for 8 TiB: numpy.load would try to allocate it.
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**37, 16)}
    path = _write(tmp_path / "x.npy", npy_bytes(header, bytes(8)))
    assert path.stat().st_size == 136
    with pytest.raises(DataError) as info:
        npyfile.load_npy(path)
    assert info.value.message == (f"{path}: the header claims shape [137438953472, 16] of float32 (8.0 TiB) "
                                  "but 8 bytes of data follow it")
    assert info.value.hint is not None and "numpy.save" in info.value.hint


def test_a_huge_header_length_is_refused_before_it_is_read() -> None:
    data = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (1,)}, bytes(4), version=(2, 0),
                     length=2**31)
    with pytest.raises(DataError, match="header claims 2147483648 bytes, more than the 10000"):
        npyfile.read_npy_header(io.BytesIO(data), "a.npy")


def test_element_count_overflow_is_computed_exactly() -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**62, 2**62, 2**62)}
    parsed = npyfile.read_npy_header(io.BytesIO(npy_bytes(header)), "a.npy")
    assert parsed.nbytes == 2**186 * 8  # a Python int: no wrap-around to a small number
    with pytest.raises(DataError, match=r"about 2\^189 bytes"):
        npyfile.check_size(parsed, 0, "a.npy")


def test_the_array_limit_is_enforced_even_when_the_bytes_are_there(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "a.npy", saved(np.zeros(1024, np.float32)))
    monkeypatch.setattr(npyfile, "MAX_ARRAY_BYTES", 4095)
    with pytest.raises(DataError, match=r"\(4.0 KiB\) is more than the 4.0 KiB qconvert reads per array"):
        npyfile.load_npy(path)
    monkeypatch.setattr(npyfile, "MAX_ARRAY_BYTES", 4096)
    assert npyfile.load_npy(path).shape == (1024,)


@pytest.mark.parametrize(("header", "message"), [
    ("{'descr': '|O', 'fortran_order': False, 'shape': (2,)}", "holds Python objects"),
    ("{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (2,)}", "holds Python objects"),
    ("{'descr': '|V0', 'fortran_order': False, 'shape': (2,)}", "elements have no size"),
    ("{'descr': '4S5', 'fortran_order': False, 'shape': (0,)}", "sub-array dtype"),  # found by the fuzz test
    ("{'descr': 'nonsense', 'fortran_order': False, 'shape': (2,)}", "invalid dtype 'nonsense'"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4)}", "invalid shape (-1, 4)"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", "invalid shape [2]"),
    ("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2,)}", "invalid fortran_order 'no'"),
    ("{'descr': '<f4', 'shape': (2,)}", "not a dict of descr, fortran_order and shape"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os')}", "unreadable .npy header"),
    ("-" * 9000 + "1", "unreadable .npy header"),
], ids=["object", "object-field", "void0", "subarray", "bad-dtype", "negative-dim", "list-shape", "bad-fortran",
        "missing-key", "code", "deep-nesting"])
def test_headers_numpy_save_would_not_write_are_refused(header: str, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        npyfile.read_npy_header(io.BytesIO(npy_bytes(header, bytes(64))), "a.npy")


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.npy", saved(np.array([{"a": 1}, None], dtype=object), allow_pickle=True))
    with pytest.raises(DataError, match="qconvert never unpickles data"):
        npyfile.load_npy(path)


# --- .npz archives ----------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_from_the_directory_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "d.npz", zip_bytes({"x.npy": saved(np.zeros(2**18, np.float32))},
                                                compression=zipfile.ZIP_DEFLATED))
    monkeypatch.setattr(npyfile, "ZIP_RATIO_MIN_BYTES", 2**16)
    monkeypatch.setattr(npyfile, "MAX_ZIP_RATIO", 100)

    def no_decompression(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_decompression)
    with pytest.raises(DataError, match=r"member 'x.npy' would expand \d+×, from .* to 1.0 MiB \(a zip bomb\?\)"):
        npyfile.read_npz(path)


def test_npz_totals_and_member_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {"a.npy": saved(np.zeros(8192, np.float32)), "b.npy": saved(np.zeros(8192, np.float32))}
    path = _write(tmp_path / "d.npz", zip_bytes(arrays))
    monkeypatch.setattr(npyfile, "MAX_NPZ_BYTES", 40_000)
    with pytest.raises(DataError, match=re.escape("unpack to more than 39.1 KiB in total")):
        npyfile.read_npz(path)
    assert set(npyfile.read_npz(path, ("b",))) == {"a"}  # ignored members are neither read nor counted
    monkeypatch.setattr(npyfile, "MAX_ARRAY_BYTES", 1000)
    with pytest.raises(DataError, match=re.escape("member 'a.npy' unpacks to 32.1 KiB, more than the 1000 bytes")):
        npyfile.read_npz(path)


def test_npz_member_checks(tmp_path: Path) -> None:
    good = saved(np.zeros((2, 16), np.float32))
    cases = {
        "non-npy": (zip_bytes({"x.npy": good, "notes.txt": b"hi"}), "member 'notes.txt' is not a .npy array"),
        "encrypted": (encrypted(zip_bytes({"x.npy": good})), "member 'x.npy' is encrypted"),
        "short": (zip_bytes({"x.npy": good[:-4]}), "(128 bytes) but 124 bytes of data follow it"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(DataError, match=re.escape(message)):
            npyfile.read_npz(_write(tmp_path / f"{name}.npz", data))


# --- images -----------------------------------------------------------------------------------------

IMG = [TensorSpec("x", F32, ("batch", 3, 8, 8))]


def _png(path: Path, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_image_pixel_limit_is_checked_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qconvert.calibration import images

    _png(tmp_path / "a.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1023)
    with pytest.raises(DataError, match=r"a.png is 32×32 = 1024 pixels, more than the 1023"):
        open_data(DataConfig(str(tmp_path)), IMG)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1024)
    assert open_data(DataConfig(str(tmp_path)), IMG).count() == 1


def test_truncated_images_fail_and_the_pillow_setting_is_left_alone(tmp_path: Path) -> None:
    data = _png(tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*a\.png: image file is truncated"):
        open_data(DataConfig(str(tmp_path)), IMG)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_only_the_listed_image_formats_are_decoded(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", format="GIF")  # a GIF under a .png name
    with pytest.raises(DataError, match="cannot identify image file"):
        open_data(DataConfig(str(tmp_path)), IMG)


# --- ONNX test data ---------------------------------------------------------------------------------


def _tensor(path: Path, tensor: TensorProto) -> Path:
    path.write_bytes(tensor_bytes(tensor))
    return path


def test_tensor_data_must_match_its_dims(tmp_path: Path) -> None:
    raw = numpy_helper.from_array(np.zeros((2, 16), np.float32), "x")
    raw.dims[:] = [2**40, 16]
    typed = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[1, 32], float_data=[0.0] * 16)
    cases = {
        "raw": (raw, "dims [1099511627776, 16] of FLOAT need 70368744177664 bytes of raw_data, the file holds 128"),
        "typed": (typed, "dims [1, 32] of FLOAT need 32 values in float_data, the file holds 16"),
        "string": (TensorProto(data_type=TensorProto.STRING, dims=[1], string_data=[b"a"]), "element type STRING"),
        "unknown": (TensorProto(data_type=99, dims=[1]), "unknown element type 99"),
    }
    for name, (tensor, message) in cases.items():
        with pytest.raises(DataError, match=re.escape(message)):
            read_tensor(_tensor(tmp_path / f"{name}.pb", tensor))


def test_packed_and_complex_tensors_are_sized_right(tmp_path: Path) -> None:
    int4 = numpy_helper.from_array(np.array([1, -2, 3], dtype=numpy_helper.helper.tensor_dtype_to_np_dtype(
        TensorProto.INT4)), "q")
    assert len(int4.raw_data) == 2
    name, array = read_tensor(_tensor(tmp_path / "q.pb", int4))
    assert name == "q" and array.astype(np.int8).tolist() == [1, -2, 3]
    complex_typed = TensorProto(data_type=TensorProto.COMPLEX64, dims=[2], float_data=[1, 2, 3, 4])
    assert read_tensor(_tensor(tmp_path / "c.pb", complex_typed))[1].tolist() == [1 + 2j, 3 + 4j]


def test_external_tensor_data_is_never_followed(tmp_path: Path) -> None:
    tensor = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    with pytest.raises(DataError, match="external file"):
        read_tensor(_tensor(tmp_path / "x.pb", tensor))


# --- non-finite values ------------------------------------------------------------------------------


def test_allow_nonfinite_passes_nan_through(tmp_path: Path) -> None:
    x = np.ones((3, 16), np.float32)
    x[1, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(DataError) as info:
        open_data(DataConfig(str(tmp_path / "d.npz")), VEC).count()
    assert info.value.message == f"{tmp_path / 'd.npz'}: sample 1, input 'x': 1 NaN/Inf value(s)"
    assert info.value.hint is not None and "--allow-nonfinite" in info.value.hint
    config = DataConfig(str(tmp_path / "d.npz"), allow_nonfinite=True)
    data = open_data(config, VEC)
    assert isinstance(data, CalibrationData) and data.allow_nonfinite and data.count() == 3
    assert config.to_dict()["allow_nonfinite"] is True and data.to_dict()["allow_nonfinite"] is True
    assert DataConfig("synthetic").to_dict()["allow_nonfinite"] is False
