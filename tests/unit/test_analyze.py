"""`analyze`: each node's own error against the error it carries in, on real and built models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qconvert import DataConfig, Mode, QuantizeConfig, input_specs, load_model, open_data, quantize
from qconvert.errors import ModelError
from qconvert.measurement.analysis import analyze
from tests import models
from tests.conftest import SAMPLES

TRANSFORMER = SAMPLES / "digits_transformer.onnx"


def _data(model: Path, source: Path, samples: int | None = None, labels: str | None = None) -> object:
    return open_data(DataConfig(str(source), max_samples=samples, labels=labels), input_specs(load_model(model).proto))


def test_the_node_that_breaks_accuracy_ranks_first(outlier: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, evaluation = outlier
    quant = tmp_path / "q.onnx"
    quantize(model, quant, _data(model, calib))
    report = analyze(model, quant, _data(model, evaluation))
    worst = report.nodes[0]
    assert worst.node == "mm1" and worst.own_sqnr_db < 10  # it reads the tensor whose quantization wipes it out
    first = next(n for n in report.nodes if n.node == "mm0")
    assert first.own_sqnr_db > 30 and first.carried_share == pytest.approx(0.0, abs=1e-6)  # nothing upstream
    own = [n.own_sqnr_db for n in report.nodes]
    assert own == sorted(own)
    weights = {t.name: t for t in report.tensors if t.kind == "weight"}
    assert set(weights) == {"w0", "w1", "w2"} and all(t.sqnr_db > 35 for t in weights.values())


@pytest.mark.parametrize(("name", "mode"), [("digits_transformer", Mode.STATIC), ("digits_transformer", Mode.DYNAMIC),
                                           ("digits_cnn", Mode.STATIC)])
def test_sample_model_reports_are_consistent(tmp_path: Path, name: str, mode: Mode) -> None:
    model = SAMPLES / f"{name}.onnx"
    quant = tmp_path / "q.onnx"
    calib = _data(model, SAMPLES / "digits.calib.npz", 64) if mode is Mode.STATIC else None
    quantize(model, quant, calib, config=QuantizeConfig(mode=mode))
    report = analyze(model, quant, _data(model, SAMPLES / "digits.eval.npz", 8, labels="labels"))
    assert report.samples == 8 and report.quantized_tensors > 10 and report.ranked_nodes > 5
    for node in report.nodes:
        assert 0.0 <= node.carried_share <= 1.0
        # A healthy model: no node is broken (inf: exact on its own). A Relu folded into the range
        # of the op before it is compared after its QuantizeLinear, not as the unclipped value.
        assert node.own_sqnr_db > 20, node
    assert not any(math.isnan(t.sqnr_db) for t in report.tensors)  # graph inputs are measured too
    kinds = {t.kind for t in report.tensors}
    assert kinds == {"activation", "weight"}  # integer-op weights are found in dynamic mode too
    if mode is Mode.DYNAMIC:  # no graph optimisation before dynamic quantization: the names are the file's
        assert report.reference == "as given"


def test_unrelated_models_are_refused(mlp: Path, mlp_calib: Path, tmp_path: Path) -> None:
    other = models.save(models.conv_mlp(), tmp_path / "cnn.onnx")
    quant = tmp_path / "q.onnx"
    quantize(other, quant, _data(other, models.write_npz(models.conv_mlp(), tmp_path / "c.npz", 8)))
    with pytest.raises(ModelError, match=r"takes different inputs|no quantized tensor"):
        analyze(mlp, quant, _data(mlp, mlp_calib))
