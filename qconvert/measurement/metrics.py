"""How far a value is from its reference: cosine similarity, SQNR, and the order that puts a broken
(NaN) measurement below every other. Validation, analysis and the accuracy search all measure with these."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors: 1.0 when both are all zeros, 0.0 when only one
    is, NaN when either holds a NaN/Inf (a broken output must never look similar)."""
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return math.nan
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(a64 @ b64 / (na * nb))


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from summed powers: inf when exact, -inf when there
    is no signal, NaN when the noise is not finite (a broken output)."""
    if not math.isfinite(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal else -math.inf


def nan_lowest(value: float) -> float:
    """Sort key: NaN (broken) below everything, so the worst comes first in ascending order."""
    return -math.inf if math.isnan(value) else value


@dataclass
class ErrorSums:
    """Running noise and signal power and cosine of a value against its reference."""

    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    samples: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        if r.shape != g.shape:
            return
        self.signal += float(r @ r)
        self.noise += float((g - r) @ (g - r))
        self.cosine_sum += cosine(r, g)
        self.samples += 1

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise) if self.samples else math.nan

    @property
    def cosine(self) -> float:
        return self.cosine_sum / self.samples if self.samples else math.nan
