"""Calibration-data readers: every source becomes a streamed, checked `CalibrationData`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from qconvert.calibration.arrays import batched_npz, npy_folder, npz_folder
from qconvert.calibration.base import CalibrationData, Sample, SampleFactory, sample_mismatches
from qconvert.calibration.images import image_files, image_folder
from qconvert.calibration.npyfile import npz_length
from qconvert.calibration.plugin import is_plugin_reference, load_plugin
from qconvert.calibration.synthetic import DEFAULT_SYNTHETIC_SAMPLES, free_batch_inputs, synthetic_samples
from qconvert.calibration.testdata import onnx_test_data, test_data_sets
from qconvert.config import DataConfig
from qconvert.errors import DataError
from qconvert.model.loading import TensorSpec, input_specs, load_model

__all__ = ["CalibrationData", "Sample", "open_data", "sample_mismatches"]

SYNTHETIC = "synthetic"


def open_data(config: DataConfig, specs: list[TensorSpec]) -> CalibrationData:
    """Pick the reader for `config.source`, then check its first sample against the model.

    Raises DataError listing every mismatch (names, dtypes, rank, static dims) in one message.
    """
    data = _reader(config, specs)
    data.check()
    return data


def data_for(data: CalibrationData | DataConfig, model: str | Path) -> CalibrationData:
    """`data` itself, or the samples its configuration names, checked against `model`'s inputs."""
    if isinstance(data, CalibrationData):
        return data
    return open_data(data, input_specs(load_model(model).proto))


def _reader(config: DataConfig, specs: list[TensorSpec]) -> CalibrationData:
    source = config.source

    def build(kind: str, description: str, factory: SampleFactory, synthetic: bool = False,
              length: int | None = None) -> CalibrationData:
        return CalibrationData(kind, description, specs, factory, max_samples=config.max_samples,
                               synthetic=synthetic, ignore_keys=config.ignore_keys, label_key=config.labels,
                               allow_nonfinite=config.allow_nonfinite, length=length)

    if source == SYNTHETIC:
        count = config.max_samples or DEFAULT_SYNTHETIC_SAMPLES
        factory = partial(synthetic_samples, specs, config.shape_overrides(), count, config.seed)
        free = free_batch_inputs(specs, config.shape_overrides())
        batch = f"; the dynamic batch dim of {', '.join(map(repr, free))} is 1 (--shape for another)" if free else ""
        return build("synthetic", f"synthetic data ({count} samples, seed {config.seed}{batch})",
                     factory, synthetic=True, length=count)
    path = Path(source)
    if not path.exists() and is_plugin_reference(source):
        return build("plugin", f"plugin {source}", load_plugin(source))
    if not path.exists():
        raise DataError(f"calibration data not found: {source}",
                        hint="give a .npz file, a folder of .npz/.npy/images/test_data_set_*, "
                             "file.py:function, or 'synthetic'")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"unsupported data file {path}", hint="single files must be .npz; use a folder otherwise")
        return build("npz", str(path), partial(batched_npz, path, specs, config.ignore_keys),
                     length=npz_length(path, config.ignore_keys))
    if sets := test_data_sets(path):
        return build("onnx-test-data", str(path), partial(onnx_test_data, path, specs), length=len(sets))
    if any(path.glob("*.npz")):
        return build("npz-folder", str(path), partial(npz_folder, path, config.ignore_keys),
                     length=sum(1 for p in path.glob("*.npz") if p.is_file()))
    if any(path.glob("*.npy")):
        return build("npy-folder", str(path), partial(npy_folder, path, specs, config.ignore_keys))
    if images := image_files(path):
        return build("images", str(path), partial(image_folder, path, specs, config), length=len(images))
    raise DataError(f"no calibration data found in folder {path}",
                    hint="expected .npz, .npy, images or test_data_set_* folders")
