"""Execution providers for real: the CPU provider everywhere, the QNN plugin (onnxruntime-qnn, HTP
backend simulated on x86-64) when installed. OpenVINO has its own environment (tests/openvino)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qconvert import DataConfig, QuantizeConfig, input_specs, load_model, open_data, quantize
from qconvert.config import BenchmarkConfig, EPConfig, Gates, ValidateConfig
from qconvert.errors import ExitCode, ModelError
from qconvert.measurement.benchmarking import batch_feeds, benchmark
from qconvert.measurement.validation import validate
from qconvert.providers import ProviderUnavailableError, create_session, list_providers, placement, resolve
from tests.conftest import SAMPLES

CNN = SAMPLES / "digits_cnn.onnx"
needs_qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                               reason="onnxruntime-qnn is not installed")
QNN = EPConfig(provider="qnn")


@pytest.mark.parametrize("name", ["cpu", "CPU", "CPUExecutionProvider", " cpuexecutionprovider "])
def test_cpu_by_alias_or_name(name: str) -> None:
    info = resolve(name)
    assert (info.name, info.alias) == ("CPUExecutionProvider", "cpu")


def test_an_unavailable_provider_names_what_is_there() -> None:
    with pytest.raises(ProviderUnavailableError, match=r"'tensorrt' is not available.*CPUExecutionProvider") as caught:
        resolve("tensorrt")
    assert caught.value.exit_code == ExitCode.ENVIRONMENT


def test_the_cpu_provider_is_listed_with_a_device() -> None:
    cpu = next(i for i in list_providers() if i.alias == "cpu")
    assert cpu.source.startswith("onnxruntime") and any(d.startswith("CPU") for d in cpu.devices)


def test_the_cpu_provider_has_nothing_to_place(mlp: Path) -> None:
    assert placement(create_session(mlp, EPConfig()), resolve("cpu")) is None


def test_a_file_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        create_session(tmp_path / "missing.onnx", EPConfig())


@pytest.fixture(scope="module")
def qnn_ready(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample CNN quantized with a static batch of one and every output quantized: what QNN's
    HTP backend can take."""
    out = tmp_path_factory.mktemp("qnn") / "cnn.static.onnx"
    data = open_data(DataConfig(str(SAMPLES / "digits.calib.npz"), max_samples=32), input_specs(load_model(CNN).proto))
    quantize(CNN, out, data, config=QuantizeConfig(fixed_shapes=(("image", (1, 1, 32, 32)),), float_outputs=False))
    return out


@pytest.fixture(scope="module")
def qnn_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with the dynamic batch left in: QNN takes none of it."""
    out = tmp_path_factory.mktemp("qnn") / "cnn.dynamic.onnx"
    data = open_data(DataConfig(str(SAMPLES / "digits.calib.npz"), max_samples=32), input_specs(load_model(CNN).proto))
    quantize(CNN, out, data)
    return out


@needs_qnn
def test_qnn_is_listed_from_its_plugin_package() -> None:
    qnn = resolve("qnn")
    assert qnn.name == "QNNExecutionProvider" and qnn.source.startswith("onnxruntime-qnn ")
    assert qnn.devices


@needs_qnn
def test_qnn_takes_a_static_qdq_model(qnn_ready: Path) -> None:
    where = placement(create_session(qnn_ready, QNN), resolve("qnn"))
    assert where is not None and not where.all_on_cpu
    assert where.share() > 0.9, where
    # the graph's own input Q and output DQ stay on the CPU: float in, float out
    assert where.quantized_on_provider >= where.quantized_nodes - 2
    assert set(where.cpu_op_types) <= {"QuantizeLinear", "DequantizeLinear"}


@needs_qnn
def test_qnn_accuracy_as_the_npu_computes_it(qnn_ready: Path) -> None:
    data = open_data(DataConfig(str(SAMPLES / "digits.eval.npz"), max_samples=40, labels="labels"),
                     input_specs(load_model(CNN).proto))
    result = validate(CNN, qnn_ready, data, config=ValidateConfig(gates=Gates(min_cosine=0.999, max_drop=2.5), ep=QNN))
    assert result.placement is not None and result.placement.share() > 0.9
    assert result.passed, [g.describe() for g in result.gates]
    assert result.samples == 40 and result.to_dict()["placement"]["provider"] == "QNNExecutionProvider"


@needs_qnn
def test_a_total_fallback_is_caught(qnn_dynamic: Path) -> None:
    where = placement(create_session(qnn_dynamic, QNN), resolve("qnn"))
    assert where is not None and where.all_on_cpu and where.nodes > 10
    feeds = batch_feeds(open_data(DataConfig("synthetic"), input_specs(load_model(CNN).proto)), 1)
    result = benchmark([qnn_dynamic], feeds, config=BenchmarkConfig(runs=2, warmup=0, ep=QNN))
    assert not result.passed and [g.name for g in result.gates] == ["min_provider_nodes"]
    assert result.to_dict()["fell_back_to_cpu"] == [str(qnn_dynamic)]


def test_a_provider_that_took_few_nodes_is_flagged_and_can_be_gated() -> None:
    from qconvert.results import Placement, provider_gates

    few = Placement("QNNExecutionProvider", nodes=316, nodes_on_provider=27, quantized_nodes=100,
                    quantized_on_provider=20, cpu_op_types={"Conv": 200})
    assert few.mostly_on_cpu and not few.all_on_cpu
    (gate,) = provider_gates(few, "m.onnx", 0.5)
    assert gate.name == "min_provider_share" and not gate.passed and abs(gate.value - 27 / 316) < 1e-9
    most = Placement("QNNExecutionProvider", nodes=316, nodes_on_provider=300, quantized_nodes=100,
                     quantized_on_provider=95, cpu_op_types={})
    assert not most.mostly_on_cpu and provider_gates(most, "m.onnx") == []
    assert [g.passed for g in provider_gates(most, "m.onnx", 0.9)] == [True]
