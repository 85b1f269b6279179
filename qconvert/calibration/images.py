"""Reader for a folder of images (jpg/png), resized and normalised like the model expects."""

from __future__ import annotations

import importlib.util
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qconvert.calibration.base import Sample
from qconvert.config import DataConfig, Layout
from qconvert.errors import DataError, MissingDependencyError, UsageError
from qconvert.model.loading import TensorSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# Decoders tried on those files, by content: never Pillow's others (EPS runs Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")  # JPEG also opens multi-picture (MPO) files
MAX_IMAGE_PIXELS = 8192 * 8192  # checked from the header, before decoding


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _layout_and_size(spec: TensorSpec, config: DataConfig) -> tuple[Layout, int, tuple[int, int]]:
    """Work out layout, channels and (height, width) from the options, else from the model."""
    dims = spec.dims
    if dims is None or len(dims) != 4:
        raise UsageError(f"input {spec.name!r} is not a 4-D image tensor (shape {dims})",
                         hint="image folders calibrate models with one NCHW or NHWC image input")
    layout = config.layout
    if layout is None:
        layout = Layout.NHWC if dims[3] in (1, 3) and dims[1] not in (1, 3) else Layout.NCHW
    c, h, w = (dims[1], dims[2], dims[3]) if layout is Layout.NCHW else (dims[3], dims[1], dims[2])
    channels = c if isinstance(c, int) and c > 0 else 3
    if config.image_size is not None:
        size = config.image_size
    elif isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0:
        size = (h, w)
    else:
        raise UsageError(f"input {spec.name!r} has dynamic height/width {list(dims)}",
                         hint="pass --image-size H,W")
    return layout, channels, size


def image_folder(folder: Path, specs: list[TensorSpec], config: DataConfig) -> Iterator[Sample]:
    if importlib.util.find_spec("PIL") is None:  # checked before any work, not at the first image
        raise MissingDependencyError("reading image folders needs Pillow", hint="pip install 'qconvert[images]'")
    if len(specs) != 1:
        raise UsageError(f"image folders feed models with one input; this model has {len(specs)}",
                         hint="use .npz data or a plugin for multi-input models")
    spec = specs[0]
    layout, channels, (height, width) = _layout_and_size(spec, config)
    mean = np.asarray(config.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(config.std, np.float32).reshape(-1, 1, 1)
    for n, values in (("--mean", mean), ("--std", std)):
        if values.shape[0] not in (1, channels):
            raise UsageError(f"{n} has {values.shape[0]} values for {channels} channels",
                             hint=f"give 1 or {channels} comma-separated values")
    for path in image_files(folder):
        pixels = _decode(path, "L" if channels == 1 else "RGB", (width, height))
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        chw = (chw - mean) / std
        array = chw if layout is Layout.NCHW else chw.transpose(1, 2, 0)
        yield {spec.name: np.ascontiguousarray(array[None], dtype=spec.dtype)}


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as float32 in [0, 1], resized; its pixel count is checked from the header before
    anything is decoded, and a truncated file is an error, never padded (LOAD_TRUNCATED_IMAGES is
    left as Pillow ships it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"image {path} is {width}×{height} = {width * height} pixels, more than the "
                                    f"{MAX_IMAGE_PIXELS} qconvert decodes", hint="resize it first")
                resized = img.convert(mode).resize(size, Image.Resampling.BILINEAR)
                return np.asarray(resized, np.float32) / 255.0
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(f"image {path} is too large to decode safely: {exc}", hint="resize it first") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        raise DataError(f"cannot read image {path}: {exc}", hint="remove or re-save that file") from exc
