"""Reader for ONNX test-data folders: `test_data_set_*/input_*.pb` (the ONNX model zoo layout).

Each TensorProto is checked before `numpy_helper.to_array` sees it: a known element type, data
stored in the file itself, and dims whose element count matches the bytes (or values) present.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibration import npyfile
from qconvert.calibration.base import Sample
from qconvert.errors import DataError
from qconvert.model.loading import TensorSpec

_HINT = "expected a TensorProto serialized by onnx (numpy_helper.from_array(...).SerializeToString())"
# Element types packed below one byte: bits per element (raw_data) and elements per int32_data entry.
_PACKED = {"INT4": (4, 2), "UINT4": (4, 2), "FLOAT4E2M1": (4, 2), "INT2": (2, 4), "UINT2": (2, 4),
           "FLOAT6E2M3": (6, 1), "FLOAT6E3M2": (6, 1)}


def test_data_sets(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("test_data_set_*") if p.is_dir())


def _position(path: Path) -> int:
    last = path.stem.split("_")[-1]
    return int(last) if last.isdigit() else 0


def onnx_test_data(folder: Path, specs: list[TensorSpec]) -> Iterator[Sample]:
    """One sample per test_data_set_N; unnamed tensors map to the model's inputs by position."""
    for data_set in test_data_sets(folder):
        sample: Sample = {}
        files = sorted((p for p in data_set.glob("input_*.pb") if p.is_file()), key=_position)
        for position, path in enumerate(files):
            name, array = read_tensor(path)
            name = name or (specs[position].name if position < len(specs) else path.stem)
            sample[name] = array
        yield sample


def read_tensor(path: Path) -> tuple[str, np.ndarray]:
    """The name and value of one serialized TensorProto, refused unless its dims match its data."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    size = path.stat().st_size
    if size > npyfile.MAX_ARRAY_BYTES + npyfile.MiB:
        raise DataError(f"cannot read tensor {path}: {npyfile.format_size(size)} is more than the "
                        f"{npyfile.format_size(npyfile.MAX_ARRAY_BYTES)} qconvert reads per array", hint=_HINT)
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: the C++ protobuf backend
        raise DataError(f"cannot read tensor {path}: not a TensorProto ({exc})", hint=_HINT) from exc
    _check_tensor(tensor, path, onnx)
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"cannot read tensor {path}: {exc}", hint=_HINT) from exc
    return tensor.name, array


def _check_tensor(tensor: Any, path: Path, onnx: Any) -> None:
    proto = onnx.TensorProto
    where = f"cannot read tensor {path}"
    type_name = proto.DataType.Name(tensor.data_type) if tensor.data_type in proto.DataType.values() else None
    if type_name is None or type_name in ("UNDEFINED", "STRING"):
        what = f"element type {type_name}" if type_name else f"unknown element type {tensor.data_type}"
        raise DataError(f"{where}: {what}", hint="calibration tensors hold numbers" if type_name else _HINT)
    if tensor.data_location == proto.EXTERNAL or len(tensor.external_data):
        raise DataError(f"{where}: its data is in an external file, which qconvert does not follow",
                        hint="save test data with the values inside the .pb file")
    if tensor.HasField("segment"):
        raise DataError(f"{where}: a tensor segment, not a whole tensor", hint=_HINT)
    dims = list(tensor.dims)
    if len(dims) > npyfile.MAX_DIMS or any(d < 0 for d in dims):
        raise DataError(f"{where}: invalid dims {dims[:8]}", hint=_HINT)
    count = math.prod(dims)
    if tensor.HasField("raw_data"):
        bits, _ = _PACKED.get(type_name, (8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize, 1))
        expected, present, unit = (count * bits + 7) // 8, len(tensor.raw_data), "bytes of raw_data"
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        per_entry = _PACKED.get(type_name, (0, 1))[1]
        per_element = 2 if type_name in ("COMPLEX64", "COMPLEX128") else 1
        expected = (count * per_element + per_entry - 1) // per_entry
        present, unit = len(getattr(tensor, field)), f"values in {field}"
    if expected != present:
        raise DataError(f"{where}: dims {_dims(dims)} of {type_name} need {expected} {unit}, the file holds "
                        f"{present}", hint="the file is truncated or was altered; write it again with onnx")
    nbytes = count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if nbytes > npyfile.MAX_ARRAY_BYTES:
        raise DataError(f"{where}: {npyfile.format_size(nbytes)} is more than the "
                        f"{npyfile.format_size(npyfile.MAX_ARRAY_BYTES)} qconvert reads per array", hint=_HINT)


def _dims(dims: list[int]) -> str:
    text = str(dims)
    return text if len(text) <= 60 else text[:59] + "…"
