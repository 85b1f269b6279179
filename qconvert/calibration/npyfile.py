"""Defensive .npy / .npz reading: every size a header or a zip directory claims is checked against the
bytes actually there, and against fixed limits, before anything is allocated or decompressed.

`np.load` trusts the file: a 136-byte .npy can ask for terabytes, a small .npz can be a zip bomb.
Here a .npy header is parsed by hand (never more than `MAX_HEADER_BYTES`), object dtypes are refused
(nothing is ever unpickled), and array data is read only when the header's shape times itemsize equals the
bytes that follow it. The limits are module constants so tests (and embedders) can lower them.
"""

from __future__ import annotations

import ast
import lzma
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from qconvert.errors import DataError

MiB = 1 << 20
GiB = 1 << 30
MAX_ARRAY_BYTES = 16 * GiB  # one array: a .npy file or one .npz member
MAX_NPZ_BYTES = 32 * GiB  # every member of one .npz read together, uncompressed
MAX_ZIP_RATIO = 1000  # uncompressed / compressed size of a member above ZIP_RATIO_MIN_BYTES
ZIP_RATIO_MIN_BYTES = 16 * MiB  # smaller members may compress as well as they like
MAX_HEADER_BYTES = 10_000  # numpy's own default `max_header_size`
MAX_DIMS = 64  # numpy's maximum rank
_CHUNK = 16 * MiB  # .npz members are read into their array this much at a time

NPY_HINT = "expected a .npy written by numpy.save"
NPZ_HINT = "expected a .npz written by numpy.savez"
_FORGED_HINT = "the file is truncated or its header was altered; write it again with numpy.save / numpy.savez"
_MAGIC = b"\x93NUMPY"
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
_HEADER_KEYS = {"descr", "fortran_order", "shape"}
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What a damaged file raises inside zipfile, zlib, bz2 (OSError), lzma or numpy.
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, struct.error,
               NotImplementedError, OverflowError)


@dataclass(frozen=True)
class NpyHeader:
    """A parsed .npy header; `offset` is where the array data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        """The bytes the header claims, as a Python int: no overflow however large the shape."""
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        shape = str(list(self.shape))
        dtype = str(self.dtype)
        return f"shape {_clip(shape)} of {_clip(dtype)} ({format_size(self.nbytes)})"


def format_size(n: int) -> str:
    """Bytes for people: exact below 1 KiB, one decimal above, a power of two past exbibytes."""
    if n < 1024:
        return f"{n} byte{'' if n == 1 else 's'}"
    if n >= 1024**7:
        return f"about 2^{n.bit_length() - 1} bytes"
    for power, unit in enumerate(("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"), start=1):
        if n < 1024 ** (power + 1) or unit == "EiB":
            break
    return f"{n / 1024**power:.1f} {unit}"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read(stream: IO[bytes], size: int, where: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DataError(f"{where}: ends inside the .npy {what} ({len(data)} of {size} bytes)", hint=_FORGED_HINT)
    return data


def read_npy_header(stream: IO[bytes], where: str) -> NpyHeader:
    """Parse the header at the start of `stream` (a .npy file or .npz member) without trusting it.

    Reads at most 12 + MAX_HEADER_BYTES bytes. Raises DataError for anything numpy.save would not
    write: no magic, an unknown version, a header that is not the expected dict, a negative or
    non-integer dim, an unknown dtype, a dtype holding Python objects, one of size zero or a sub-array one.
    """
    prefix = stream.read(8)
    if len(prefix) < 8 or prefix[:6] != _MAGIC:
        raise DataError(f"{where} is not a .npy array (it does not start with numpy's magic bytes)", hint=NPY_HINT)
    version = (prefix[6], prefix[7])
    if version not in _VERSIONS:
        raise DataError(f"{where}: unknown .npy format version {version[0]}.{version[1]} (numpy writes 1.0-3.0)",
                        hint=NPY_HINT)
    length_format, encoding = _VERSIONS[version]
    (length,) = struct.unpack(length_format, _read(stream, struct.calcsize(length_format), where, "header length"))
    if length > MAX_HEADER_BYTES:
        raise DataError(f"{where}: the .npy header claims {length} bytes, more than the {MAX_HEADER_BYTES} "
                        "numpy itself accepts", hint=_FORGED_HINT)
    try:
        text = _read(stream, length, where, "header").decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: the .npy header is not {encoding} text", hint=_FORGED_HINT) from exc
    shape, fortran_order, dtype = _parse_header(text, where, legacy=version < (3, 0))
    return NpyHeader(shape, fortran_order, dtype, offset=8 + struct.calcsize(length_format) + length)


def _literal(text: str, where: str, legacy: bool) -> object:
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        if legacy:  # Python 2 wrote long ints as 12L; numpy still reads those files
            try:
                return ast.literal_eval(re.sub(r"\b(\d+)[lL]\b", r"\1", text))
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                pass
        raise DataError(f"{where}: unreadable .npy header {_clip(repr(text.strip()))}", hint=_FORGED_HINT) from exc


def _parse_header(text: str, where: str, legacy: bool) -> tuple[tuple[int, ...], bool, np.dtype]:
    header = _literal(text, where, legacy)
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise DataError(f"{where}: the .npy header is not a dict of descr, fortran_order and shape: "
                        f"{_clip(repr(text.strip()))}", hint=_FORGED_HINT)
    shape = header["shape"]
    if (not isinstance(shape, tuple) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and d >= 0 for d in shape)):
        raise DataError(f"{where}: invalid shape {_clip(repr(shape))} in the .npy header "
                        f"(expected at most {MAX_DIMS} non-negative integers)", hint=_FORGED_HINT)
    fortran_order = header["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise DataError(f"{where}: invalid fortran_order {_clip(repr(fortran_order))} in the .npy header",
                        hint=_FORGED_HINT)
    descr = header["descr"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated dtype aliases are still dtypes
            dtype = npy_format.descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError) as exc:
        raise DataError(f"{where}: invalid dtype {_clip(repr(descr))} in the .npy header", hint=_FORGED_HINT) from exc
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (dtype {_clip(str(dtype))}): refused, qconvert never "
                        "unpickles data", hint="save numeric arrays (numbers, not Python objects or ragged lists)")
    if dtype.itemsize == 0:
        raise DataError(f"{where}: the .npy header gives dtype {_clip(str(dtype))}, whose elements have no size",
                        hint="save numeric arrays")
    if dtype.subdtype is not None:  # numpy.save folds a sub-array dtype into the shape; readers disagree on it
        raise DataError(f"{where}: the .npy header gives the sub-array dtype {_clip(str(dtype))}, which numpy.save "
                        "never writes", hint=_FORGED_HINT)
    return tuple(int(d) for d in shape), fortran_order, dtype


def check_size(header: NpyHeader, present: int, where: str) -> None:
    """Refuse a header whose shape times itemsize differs from the `present` data bytes, or exceeds the limit."""
    if header.nbytes != present:
        raise DataError(f"{where}: the header claims {header.describe()} but {format_size(present)} of data "
                        "follow it", hint=_FORGED_HINT)
    if header.nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{where}: {header.describe()} is more than the {format_size(MAX_ARRAY_BYTES)} qconvert "
                        "reads per array", hint="split the data: one sample per .npz file in a folder")


def load_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only, after its header was checked against the file's size."""
    try:
        with path.open("rb") as stream:
            header = read_npy_header(stream, str(path))
            size = os.fstat(stream.fileno()).st_size
        check_size(header, size - header.offset, str(path))
        if header.nbytes == 0:  # nothing to map (mmap refuses empty ranges)
            return np.zeros(header.shape, header.dtype)
        return np.memmap(path, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape,
                         order="F" if header.fortran_order else "C")
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=NPY_HINT) from exc


def read_npz(path: Path, ignore: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of a .npz but the ignored ones, each member checked before it is decompressed."""
    try:
        with path.open("rb") as stream:
            if stream.read(len(_MAGIC)) == _MAGIC:
                raise DataError(f"cannot read {path}: it holds a bare array, not a .npz archive", hint=NPZ_HINT)
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(path, archive.infolist(), ignore)
            return {key: _read_member(path, archive, info) for key, info in members}
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=NPZ_HINT) from exc


def npz_length(path: Path, ignore: tuple[str, ...] = ()) -> int | None:
    """Axis 0 of the first array of a .npz, from its header alone; None when that cannot be told
    (reading the arrays then says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(path, archive.infolist(), ignore)
            if not members:
                return None
            with archive.open(members[0][1]) as stream:
                shape = read_npy_header(stream, str(path)).shape
    except (DataError, *READ_ERRORS):
        return None
    return shape[0] if shape else None


def _checked_members(path: Path, infos: list[zipfile.ZipInfo],
                     ignore: tuple[str, ...]) -> list[tuple[str, zipfile.ZipInfo]]:
    """The members to read, after refusing anything numpy.savez would not write and every zip bomb."""
    chosen: list[tuple[str, zipfile.ZipInfo]] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        where = f"{path} member {_clip(repr(name))}"
        if info.is_dir() or not name.endswith(".npy"):
            raise DataError(f"{where} is not a .npy array", hint=f"{NPZ_HINT}, which holds only .npy members")
        key = name[: -len(".npy")]
        if key in seen:
            raise DataError(f"{where} appears twice in the archive", hint=NPZ_HINT)
        seen.add(key)
        if info.flag_bits & 0x1:
            raise DataError(f"{where} is encrypted", hint=NPZ_HINT)
        if info.compress_type not in _COMPRESSIONS:
            raise DataError(f"{where} uses unsupported compression method {info.compress_type}", hint=NPZ_HINT)
        if key in ignore:
            continue
        if info.file_size > MAX_ARRAY_BYTES + 12 + MAX_HEADER_BYTES:
            raise DataError(f"{where} unpacks to {format_size(info.file_size)}, more than the "
                            f"{format_size(MAX_ARRAY_BYTES)} qconvert reads per array",
                            hint="split the data: one sample per .npz file in a folder")
        if info.file_size > ZIP_RATIO_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * info.compress_size:
            ratio = f"{info.file_size // info.compress_size}×" if info.compress_size else "without limit"
            raise DataError(f"{where} would expand {ratio}, from {format_size(info.compress_size)} to "
                            f"{format_size(info.file_size)} (a zip bomb?)",
                            hint=f"qconvert refuses members above {format_size(ZIP_RATIO_MIN_BYTES)} that expand "
                                 f"more than {MAX_ZIP_RATIO}×; write the data again with numpy.savez")
        total += info.file_size
        if total > MAX_NPZ_BYTES:
            raise DataError(f"{path}: its arrays unpack to more than {format_size(MAX_NPZ_BYTES)} in total",
                            hint="split the data: one sample per .npz file in a folder")
        chosen.append((key, info))
    return chosen


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    where = f"{path} member {_clip(repr(info.filename))}"
    with archive.open(info) as stream:
        header = read_npy_header(stream, where)
        check_size(header, max(0, info.file_size - header.offset), where)
        shape = header.shape[::-1] if header.fortran_order else header.shape
        array = np.empty(shape, header.dtype)
        flat = array.reshape(-1).view(np.uint8)
        done = 0
        while done < header.nbytes:
            chunk = stream.read(min(_CHUNK, header.nbytes - done))
            if not chunk:
                raise DataError(f"{where}: the data ends after {format_size(done)} of {format_size(header.nbytes)}",
                                hint=_FORGED_HINT)
            flat[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        if stream.read(1):  # also makes zipfile check the member's CRC
            raise DataError(f"{where}: more data follows the array than its header claims", hint=_FORGED_HINT)
    return array.transpose() if header.fortran_order else array
