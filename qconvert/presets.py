"""Named starting points: a target (which hardware runs the model) and a model family.

A preset is a set of `QuantizeConfig` fields. Presets apply in the order given, so a family
preset after a target preset refines it; options given explicitly on top always win. The
expansion is printed and recorded in the result, so a preset never hides what ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from qconvert.config import (
    NODE_UNIT_PROVIDERS,
    ActivationType,
    CalibrationMethod,
    EPConfig,
    Mode,
    QuantizeConfig,
    Sensitive,
    Target,
    WeightType,
    alias,
)
from qconvert.errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "target" or "family"
    summary: str
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "summary": self.summary,
                "settings": {k: _plain(v) for k, v in self.settings.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value.value if hasattr(value, "value") else value


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu-vnni", "target",
           "x86 with VNNI/AMX: uint8 activations × int8 per-channel weights, the pairing VNNI's u8·s8 dot "
           "product runs natively (int8 activations leave many Convs unfused)",
           {"activations": ActivationType.UINT8, "weights": WeightType.INT8, "per_channel": True,
            "reduce_range": False}),
    Preset("cpu-avx2", "target",
           "x86 without VNNI: u8·s8 goes through VPMADDUBSW, whose int16 sums can saturate; 7-bit weights "
           "(reduce_range) keep them in range, as onnxruntime's documentation advises",
           {"activations": ActivationType.UINT8, "weights": WeightType.INT8, "per_channel": True,
            "reduce_range": True}),
    Preset("arm64", "target",
           "ARM64 (NEON dot product): uint8 activations × int8 symmetric per-channel weights, full 8-bit "
           "range (no saturation issue on ARM)",
           {"activations": ActivationType.UINT8, "weights": WeightType.INT8, "per_channel": True,
            "reduce_range": False, "symmetric_weights": True}),
    Preset("openvino", "target",
           "OpenVINO EP: static QDQ (measured: dynamic integer ops run slower than FP32 there), asymmetric "
           "uint8 activations, symmetric int8 per-channel weights (NNCF's 'mixed' scheme)",
           {"mode": Mode.STATIC, "activations": ActivationType.UINT8, "weights": WeightType.INT8,
            "per_channel": True, "symmetric_weights": True, "symmetric_activations": False}),
    Preset("qnn-htp", "target",
           "Qualcomm HTP (QNN EP): static QDQ with onnxruntime's QNN helpers (get_qnn_qdq_config per-op "
           "overrides), uint8 activations and weights; the accuracy search raises sensitive activations to "
           "uint16 instead of float, which HTP would leave to the CPU; every output quantized, as HTP runs whole "
           "Q/DQ node units only. Fix dynamic dims with --fix-shape",
           {"mode": Mode.STATIC, "target": Target.QNN, "activations": ActivationType.UINT8,
            "weights": WeightType.UINT8, "per_channel": False, "symmetric_weights": False,
            "sensitive": Sensitive.INT16, "float_outputs": False}),
    Preset("vitisai", "target",
           "AMD Vitis AI / Ryzen AI NPU: static QDQ, int8 symmetric activations and weights per tensor "
           "(Quark's XINT8 scheme without its power-of-two scales, which onnxruntime's quantizer cannot make); every "
           "output quantized, as the NPU runs whole Q/DQ node units only",
           {"mode": Mode.STATIC, "activations": ActivationType.INT8, "weights": WeightType.INT8,
            "per_channel": False, "symmetric_activations": True, "symmetric_weights": True,
            "float_outputs": False}),
    Preset("transformer", "family",
           "transformers: quantize the weight MatMuls/Gemms only, per channel; LayerNorm, Softmax, GELU and the "
           "residual Adds stay in float, where their outliers would cost accuracy; in static mode, SmoothQuant "
           "(alpha 0.7) moves activation outliers into the weights first and percentile calibration (99.999) "
           "clips the rare spikes that remain",
           {"op_types": ("MatMul", "Gemm"), "per_channel": True, "smooth": 0.7,
            "method": CalibrationMethod.PERCENTILE, "percentile": 99.999}),
    Preset("cnn", "family",
           "CNNs: every quantizable op (Conv, pooling, Add, Concat, …) in static QDQ so whole blocks run in "
           "integer kernels; per-channel weights",
           {"op_types": (), "per_channel": True}),
)}
CONFIG_FIELDS = frozenset(f.name for f in fields(QuantizeConfig))


def expand(names: list[str] | tuple[str, ...], explicit: dict[str, Any] | None = None) -> QuantizeConfig:
    """QuantizeConfig defaults, then each preset in order, then the `explicit` fields on top."""
    config = QuantizeConfig()
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            raise UsageError(f"unknown preset {name!r}", hint=f"choose from {', '.join(PRESETS)}")
        config = replace(config, **preset.settings)
    unknown = set(explicit or {}) - CONFIG_FIELDS
    if unknown:
        raise UsageError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    return replace(config, **(explicit or {}), presets=tuple(names))


@dataclass(frozen=True)
class Resolved:
    """A configuration from presets and explicit fields, with what the providers' rules changed."""

    config: QuantizeConfig
    explicit: tuple[str, ...]  # fields set explicitly or by a provider's rule: they override the presets
    warnings: tuple[str, ...]


def resolve(names: list[str] | tuple[str, ...], explicit: dict[str, Any], *,
            providers: Sequence[EPConfig] = ()) -> Resolved:
    """`expand`, after the rules of the providers the model will run on: an NPU that runs whole Q/DQ
    node units only (NODE_UNIT_PROVIDERS) needs every output quantized, unless the caller chose."""
    given = dict(explicit)
    warnings: list[str] = []
    npus = sorted({alias(p.provider) for p in providers} & NODE_UNIT_PROVIDERS)
    if npus and "float_outputs" not in given:
        given["float_outputs"] = False
        warnings.append(f"--ep {npus[0]}: every output quantized (--quantize-all-outputs), as its NPU runs a "
                        "quantized op only with its output quantized too")
    return Resolved(expand(names, given), tuple(sorted(given)), tuple(warnings))
