"""Property: whatever bytes a .npy file or .npz archive holds, the readers return an array consistent
with those bytes (exactly what numpy.load reads from them) or raise DataError; never another
exception, never an allocation beyond the bytes present.

The strategies and properties are shared with `bench/fuzz.py`, which runs many more examples."""

from __future__ import annotations

import io
import tempfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qconvert.calibration import npyfile
from qconvert.errors import DataError
from tests.unit.test_data_safety import npy_bytes, saved, zip_bytes

# Beyond the bytes read, what a reader may allocate (headers, zipfile buffers, Python objects).
ALLOWANCE = 4 * npyfile.MiB

DTYPES = ["<f4", ">f8", "<f2", "|b1", "<i8", "|u1", "<c8", "<U3", "|S5", "<M8[s]"]
FORGED_DESCRS: list[object] = [
    *DTYPES, "|O", "|V0", "|S0", "<U0", "nonsense", "", "<f4x", "V9999999999", 3, None, {"a": 1},
    [("a", "<f4"), ("b", "<i2")], [("a", "|O")], [("a", "<f4"), ("a", "<f4")], ("<f4", (2, 3)),
    ("<f4", (2**40,)), ("<f4", (-1,)), [("a", "<f4", (2**31, 2**31))],
]
DIMS = st.one_of(st.integers(0, 6), st.integers(-3, 2**70), st.sampled_from([2**31, 2**32, 2**63 - 1, 2**64]))


@st.composite
def valid_npy(draw: st.DrawFn) -> bytes:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    array = draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    return saved(array)


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """A valid .npy, then at most one forger's mutation: a new header, a cut, extra bytes, a flipped byte,
    a rewritten header-length field, or arbitrary header text."""
    data = draw(valid_npy())
    kind = draw(st.sampled_from(["none", "header", "truncate", "extend", "flip", "length", "text"]))
    payload = data[128:] if len(data) > 128 else b""
    if kind == "header":
        header: dict[str, object] = {
            "descr": draw(st.sampled_from(FORGED_DESCRS)),
            "fortran_order": draw(st.sampled_from([False, True, 0, "yes"])),
            "shape": tuple(draw(st.lists(DIMS, max_size=5))) if draw(st.integers(0, 9)) else [1],
        }
        if draw(st.integers(0, 9)) == 0:
            header.pop(draw(st.sampled_from(sorted(header))))
        version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
        return npy_bytes(header, payload + draw(st.binary(max_size=64)), version=version)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "length":
        return data[:8] + draw(st.binary(min_size=2, max_size=2)) + data[10:]
    if kind == "text":
        return npy_bytes(draw(st.text(max_size=200)), payload, version=draw(st.sampled_from([(1, 0), (3, 0)])))
    return data


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    """An archive of mutated .npy members, stored or deflated, sometimes with a byte of the zip flipped."""
    members = {f"m{i}.npy": draw(npy_files()) for i in range(draw(st.integers(0, 3)))}
    data = zip_bytes(members, compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data


def _measured(read: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray] | None, int]:
    """The arrays `read` returns (None on DataError) and the peak memory it traced."""
    tracemalloc.start()
    try:
        return read(), tracemalloc.get_traced_memory()[1]
    except DataError:
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _same_as_numpy(array: np.ndarray, npy: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's note on Python 2 headers
        reference = np.load(io.BytesIO(npy), allow_pickle=False)  # safe: the header matched the bytes
    assert array.dtype == reference.dtype and array.shape == reference.shape
    assert array.tobytes() == reference.tobytes()


def check_npy(npy: bytes) -> None:
    """The property for one .npy: read memory-mapped from a folder, and as the only member of a .npz."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(npy)
        archive = Path(tmp) / "x.npz"
        archive.write_bytes(zip_bytes({"x.npy": npy}, compression=zipfile.ZIP_DEFLATED))
        for read in (lambda: [npyfile.load_npy(path)], lambda: list(npyfile.read_npz(archive).values())):
            arrays, peak = _measured(read)
            assert peak <= len(npy) + ALLOWANCE, f"{peak} bytes traced for a {len(npy)}-byte file"
            for array in arrays or []:
                assert array.nbytes <= len(npy)
                _same_as_numpy(array, npy)
            del arrays


def check_npz(data: bytes) -> None:
    """The property for one .npz archive: every member returned matches what numpy reads from it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        path.write_bytes(data)
        arrays, peak = _measured(lambda: list(npyfile.read_npz(path).values()))
        assert peak <= 2 * len(data) + ALLOWANCE, f"{peak} bytes traced for a {len(data)}-byte archive"
        if arrays is None:
            return
        with zipfile.ZipFile(path) as archive:
            for info, array in zip(archive.infolist(), arrays, strict=True):
                _same_as_numpy(array, archive.read(info))


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(npy_files())
def test_any_npy_bytes_read_consistently_or_raise_data_error(npy: bytes) -> None:
    check_npy(npy)


@FUZZ
@given(npz_files())
def test_any_npz_bytes_read_consistently_or_raise_data_error(data: bytes) -> None:
    check_npz(data)
