"""Synthetic samples from the model's input specs: a smoke run, not a real calibration."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qconvert.calibration.base import Sample
from qconvert.errors import UsageError
from qconvert.model.loading import TensorSpec

DEFAULT_SYNTHETIC_SAMPLES = 8


def resolve_shape(spec: TensorSpec, overrides: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """A concrete shape: `--shape` wins; a dynamic leading (batch) dim becomes 1; any other
    dynamic dim is an error naming it."""
    if spec.name in overrides:
        shape = overrides[spec.name]
        if spec.dims is not None and len(shape) != len(spec.dims):
            raise UsageError(f"--shape {spec.name} has rank {len(shape)}, the model's input has rank "
                             f"{len(spec.dims)} {list(spec.dims)}")
        return shape
    if spec.dims is None:
        raise UsageError(f"input {spec.name!r} has unknown rank", hint=f"pass --shape {spec.name}=d0,d1,…")
    concrete: list[int] = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int) and dim > 0:
            concrete.append(dim)
        elif axis == 0:
            concrete.append(1)
        else:
            raise UsageError(f"input {spec.name!r} has dynamic dim {axis} ({dim or '?'}) in {list(spec.dims)}",
                             hint=f"pass --shape {spec.name}=" + ",".join(
                                 str(d) if isinstance(d, int) and d > 0 else "N" for d in spec.dims))
    return tuple(concrete)


def free_batch_inputs(specs: list[TensorSpec], overrides: dict[str, tuple[int, ...]]) -> list[str]:
    """Inputs whose dynamic leading (batch) dim `resolve_shape` sets to 1, the convention."""
    return [s.name for s in specs if s.name not in overrides and s.dims and not (isinstance(s.dims[0], int)
                                                                                 and s.dims[0] > 0)]


def synthetic_samples(specs: list[TensorSpec], overrides: dict[str, tuple[int, ...]], count: int,
                      seed: int) -> Iterator[Sample]:
    shapes = {s.name: resolve_shape(s, overrides) for s in specs}
    rng = np.random.default_rng(seed)
    for _ in range(count):
        sample: Sample = {}
        for spec in specs:
            shape = shapes[spec.name]
            if np.issubdtype(spec.dtype, np.floating):
                sample[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype == np.bool_:
                sample[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
            elif np.issubdtype(spec.dtype, np.integer):
                sample[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
            else:
                raise UsageError(f"cannot synthesise input {spec.name!r} of dtype {spec.dtype}",
                                 hint="give real data with --calib")
        yield sample
