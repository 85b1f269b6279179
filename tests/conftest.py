"""Shared fixtures: tiny seeded models on disk with calibration data beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

# Helpers that assert for tests: rewritten like test modules, so they still check under `python -O`.
pytest.register_assert_rewrite("tests.corpus", "tests.models")

from tests import models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return models.save(models.conv_mlp(), tmp_path / "cnn.onnx")


@pytest.fixture
def cnn_calib(tmp_path: Path) -> Path:
    return models.write_npz(models.conv_mlp(), tmp_path / "cnn.calib.npz", samples=16, seed=1)


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return models.save(models.mlp(), tmp_path / "mlp.onnx")


@pytest.fixture
def mlp_calib(tmp_path: Path) -> Path:
    return models.write_npz(models.mlp(), tmp_path / "mlp.calib.npz", samples=16, seed=1)


@pytest.fixture
def outlier(tmp_path: Path) -> tuple[Path, Path, Path]:
    """models.outlier_mlp() with calibration and (disjoint) evaluation data."""
    model = models.outlier_mlp()
    return (models.save(model, tmp_path / "outlier.onnx"),
            models.write_npz(model, tmp_path / "outlier.calib.npz", samples=32, seed=1),
            models.write_npz(model, tmp_path / "outlier.eval.npz", samples=64, seed=2))
