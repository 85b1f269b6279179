"""The calibration-data contract: a re-iterable stream of `{input name: array}` samples,
checked against the model's inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

import numpy as np

from qconvert.errors import DataError, UsageError
from qconvert.model.loading import TensorSpec

Sample = dict[str, np.ndarray]
SampleFactory = Callable[[], Iterator[Mapping[str, object]]]


def sample_mismatches(sample: Mapping[str, object], specs: list[TensorSpec], *,
                      ignore: tuple[str, ...] = ()) -> list[str]:
    """Every way one sample disagrees with the model's inputs (names, dtypes, rank, static dims)."""
    problems: list[str] = []
    names = {s.name for s in specs}
    for key in sorted(set(sample) - names - set(ignore)):
        problems.append(f"unexpected input {key!r} (model inputs: {', '.join(sorted(names))})")
    for spec in specs:
        if spec.name not in sample:
            problems.append(f"missing input {spec.name!r}")
            continue
        value = sample[spec.name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{spec.name!r}: expected a numpy array, got {type(value).__name__}")
            continue
        if value.dtype != spec.dtype:
            problems.append(f"{spec.name!r}: dtype {value.dtype}, model expects {spec.dtype}")
        if spec.dims is None:
            continue
        if value.ndim != len(spec.dims):
            problems.append(f"{spec.name!r}: rank {value.ndim} (shape {list(value.shape)}), "
                            f"model expects rank {len(spec.dims)} {list(spec.dims)}")
            continue
        for axis, (got, want) in enumerate(zip(value.shape, spec.dims, strict=True)):
            if isinstance(want, int) and want > 0 and got != want:
                problems.append(f"{spec.name!r}: dim {axis} is {got}, model expects {want} "
                                f"(shape {list(value.shape)} vs {list(spec.dims)})")
    return problems


def check_finite(sample: Mapping[str, np.ndarray], index: int, *, source: str | None = None) -> None:
    """Refuse NaN/Inf: they poison every range computed from the sample (opt out with `allow_nonfinite`)."""
    for name, value in sample.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            where = f"{source}: " if source else ""
            raise DataError(f"{where}sample {index}, input {name!r}: {bad} NaN/Inf value(s)",
                            hint="clean or drop that sample, or pass --allow-nonfinite "
                                 "(DataConfig.allow_nonfinite) to accept it")


@dataclass
class CalibrationData:
    """Streamed samples from one source, capped at `max_samples`, each checked before use.

    Iterating twice re-reads the source: nothing is held in memory beyond one sample.
    """

    kind: str
    description: str
    specs: list[TensorSpec]
    factory: SampleFactory
    max_samples: int | None = None
    synthetic: bool = False
    ignore_keys: tuple[str, ...] = ()
    label_key: str | None = None  # a key carried beside the inputs, never fed to the model
    allow_nonfinite: bool = False  # pass NaN/Inf through instead of refusing the sample
    length: int | None = None  # samples in the source, when its reader can tell without reading them

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, got {self.max_samples}",
                             hint="leave it unset to use every sample")

    def check(self) -> None:
        """Read the first sample (and its label) and raise one error listing every mismatch with the model."""
        first = next(self.labelled(), None)
        if first is None:
            raise DataError(f"no samples in {self.description}", hint="point --calib at non-empty data")

    def __iter__(self) -> Iterator[Sample]:
        for sample, _ in self.labelled():
            yield sample

    def labelled(self) -> Iterator[tuple[Sample, np.ndarray | None]]:
        """Samples with their labels (None when no `label_key` was given)."""
        ignore = (*self.ignore_keys, self.label_key) if self.label_key else self.ignore_keys
        # islice stops before asking for sample max_samples + 1: nothing past the cap is read.
        for count, raw in enumerate(islice(self.factory(), self.max_samples)):
            problems = sample_mismatches(raw, self.specs, ignore=ignore)
            if problems:
                raise DataError(
                    f"{self.description}: sample {count} does not match the model's inputs",
                    hint="fix the data or pass --shape / the right input names",
                    details=tuple(problems),
                )
            sample: Sample = {s.name: np.asarray(raw[s.name]) for s in self.specs}
            if not self.allow_nonfinite:
                check_finite(sample, count, source=self.description)
            label = None
            if self.label_key:
                if self.label_key not in raw:
                    raise DataError(f"{self.description}: sample {count} has no labels {self.label_key!r}",
                                    hint=f"store the labels under {self.label_key!r} beside the inputs "
                                         f"(keys found: {', '.join(sorted(map(str, raw)))})")
                label = np.asarray(raw[self.label_key])
            yield sample, label

    def count(self) -> int:
        return sum(1 for _ in self)

    def expected_samples(self) -> int | None:
        """How many samples an iteration yields, when known without reading them (progress totals)."""
        if self.length is None:
            return None
        return min(self.length, self.max_samples) if self.max_samples is not None else self.length

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "source": self.description, "synthetic": self.synthetic,
                "max_samples": self.max_samples, "labels": self.label_key,
                "allow_nonfinite": self.allow_nonfinite}
