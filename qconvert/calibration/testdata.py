"""Reader for ONNX test-data folders: `test_data_set_*/input_*.pb` (the ONNX model zoo layout)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qconvert.calibration.base import Sample
from qconvert.errors import DataError
from qconvert.model import TensorSpec


def test_data_sets(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("test_data_set_*") if p.is_dir())


def onnx_test_data(folder: Path, specs: list[TensorSpec]) -> Iterator[Sample]:
    """One sample per test_data_set_N; unnamed tensors map to the model's inputs by position."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    for data_set in test_data_sets(folder):
        sample: Sample = {}
        files = sorted(data_set.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1])
                       if p.stem.split("_")[-1].isdigit() else 0)
        for position, path in enumerate(files):
            tensor = onnx.TensorProto()
            try:
                tensor.ParseFromString(path.read_bytes())
                array = numpy_helper.to_array(tensor)
            except (DecodeError, ValueError, TypeError) as exc:
                raise DataError(f"cannot read tensor {path}: {exc}", hint="expected a serialized TensorProto") from exc
            name = tensor.name or (specs[position].name if position < len(specs) else path.stem)
            sample[name] = array
        yield sample
