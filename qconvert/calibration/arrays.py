"""Readers for numpy files: one batched .npz, a folder of per-sample .npz, a folder of .npy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qconvert.calibration.base import Sample
from qconvert.calibration.npyfile import load_npy, read_npz
from qconvert.errors import DataError
from qconvert.model.loading import TensorSpec

_SAMPLES_HINT = "stack the samples along axis 0 of every array, the same number in each"


def _files(folder: Path, pattern: str) -> list[Path]:
    """Regular files only: a directory or FIFO named like data is skipped, never opened."""
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _split_batch(name: str, array: np.ndarray, specs: dict[str, TensorSpec]) -> Iterator[np.ndarray]:
    """Split along axis 0. Arrays with the model input's rank keep a batch axis of 1; arrays
    one rank higher are stacks of unbatched samples."""
    spec = specs.get(name)
    keep_axis = spec is None or spec.dims is None or array.ndim == len(spec.dims)
    for i in range(array.shape[0]):
        yield array[i : i + 1] if keep_axis else array[i]


def batched_npz(path: Path, specs: list[TensorSpec], ignore: tuple[str, ...]) -> Iterator[Sample]:
    """One .npz, one array per input name, samples stacked along axis 0."""
    arrays = read_npz(path, ignore)
    if not arrays:
        raise DataError(f"{path} holds no arrays", hint="save one array per model input name")
    yield from _along_axis0(arrays, specs, f"{path}: arrays", "")


def npz_folder(folder: Path, ignore: tuple[str, ...]) -> Iterator[Sample]:
    """A folder with one sample per .npz file, in name order."""
    for path in _files(folder, "*.npz"):
        yield read_npz(path, ignore)


def npy_folder(folder: Path, specs: list[TensorSpec], ignore: tuple[str, ...]) -> Iterator[Sample]:
    """A folder of `<input name>.npy` files, samples along axis 0, memory-mapped so only the
    current sample is read; each header is checked against its file's size first."""
    files = {p.stem: p for p in _files(folder, "*.npy") if p.stem not in ignore}
    arrays = {name: load_npy(path) for name, path in sorted(files.items())}
    for sample in _along_axis0(arrays, specs, f"{folder}: .npy arrays", ".npy"):
        yield {k: np.ascontiguousarray(v) for k, v in sample.items()}


def _along_axis0(arrays: dict[str, np.ndarray], specs: list[TensorSpec], what: str, suffix: str) -> Iterator[Sample]:
    """One sample at a time from arrays that stack their samples along axis 0, which they must share."""
    lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise DataError(f"{what} must share a non-empty axis 0 (sample count)", hint=_SAMPLES_HINT,
                        details=tuple(f"{k}{suffix}: {n} samples" for k, n in lengths.items()))
    by_name = {s.name: s for s in specs}
    splits = {k: _split_batch(k, a, by_name) for k, a in arrays.items()}
    for _ in range(next(iter(lengths.values()))):
        yield {k: next(it) for k, it in splits.items()}
