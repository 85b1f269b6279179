"""Presets expand to full configurations, in order, with explicit options on top."""

from __future__ import annotations

import pytest

from qconvert.config import ActivationType, Mode, QuantizeConfig, Sensitive, Target, WeightType
from qconvert.errors import UsageError
from qconvert.presets import PRESETS, expand

REQUIRED = {"cpu-vnni", "cpu-avx2", "arm64", "openvino", "qnn-htp", "vitisai", "transformer", "cnn"}


def test_every_preset_the_targets_need_exists_and_expands() -> None:
    assert set(PRESETS) >= REQUIRED
    for name, preset in PRESETS.items():
        config = expand([name])
        assert config.presets == (name,)
        for key, value in preset.settings.items():
            assert getattr(config, key) == value, (name, key)
        assert preset.summary and preset.kind in ("target", "family")


def test_a_family_refines_a_target_and_explicit_options_win() -> None:
    config = expand(["cpu-avx2", "transformer"], {"per_channel": False})
    assert config.reduce_range is True  # from the target
    assert config.op_types == ("MatMul", "Gemm")  # from the family
    assert config.per_channel is False  # given explicitly
    assert config.presets == ("cpu-avx2", "transformer")


def test_npu_targets() -> None:
    qnn = expand(["qnn-htp"])
    assert (qnn.mode, qnn.target, qnn.sensitive) == (Mode.STATIC, Target.QNN, Sensitive.INT16)
    assert qnn.weights is WeightType.UINT8
    vitis = expand(["vitisai"])
    assert vitis.activations is ActivationType.INT8 and vitis.symmetric_activations and not vitis.per_channel


def test_no_preset_is_the_default_configuration() -> None:
    assert expand([]) == QuantizeConfig()


def test_unknown_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown preset 'gpu'"):
        expand(["gpu"])
    with pytest.raises(UsageError, match="unknown configuration keys: colour"):
        expand([], {"colour": "blue"})
