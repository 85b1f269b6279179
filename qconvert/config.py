"""Typed configuration: enums for every choice, frozen dataclasses for every option set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from qconvert.errors import UsageError

# The provider every onnxruntime build has, and the reference every measurement runs FP32 on.
CPU = "CPUExecutionProvider"
# NPU providers that run a quantized op only as a whole Q/DQ node unit, its output quantized too.
NODE_UNIT_PROVIDERS = frozenset({"qnn", "vitisai"})


def alias(name: str) -> str:
    """What --ep calls a provider: `OpenVINOExecutionProvider` -> `openvino`."""
    return name.strip().lower().removesuffix("executionprovider")


class StrEnum(str, Enum):
    """`enum.StrEnum` for Python 3.10: members compare and format as their value."""

    def __str__(self) -> str:
        return str(self.value)


class Mode(StrEnum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class ActivationType(StrEnum):
    UINT8 = "uint8"
    INT8 = "int8"
    UINT16 = "uint16"
    INT16 = "int16"


class WeightType(StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT4 = "int4"
    UINT4 = "uint4"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    DISTRIBUTION = "distribution"


class Target(StrEnum):
    """Who runs the model: `generic` (onnxruntime's defaults) or a backend whose own QDQ rules
    onnxruntime knows (`qnn`: its QNN helpers' per-op overrides, e.g. fixed Sigmoid/Tanh ranges)."""

    GENERIC = "generic"
    QNN = "qnn"


class Sensitive(StrEnum):
    """What the accuracy search does with the nodes that break accuracy: keep them in float,
    quantize them dynamically (CPU: static for the rest, fast integer ops for them too), or raise
    their activations to 16 bits (NPUs, where float would fall back to the CPU)."""

    FLOAT = "float"
    DYNAMIC = "dynamic"
    INT16 = "int16"


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides how a model is quantized.

    `mode=None` and `subgraphs=None` mean "decide from the model and the data": static when
    calibration data is given, dynamic otherwise; subgraphs quantized when the model has them.
    The defaults (uint8 activations, int8 per-channel weights) are the fast combination on x86
    with VNNI: int8 activations leave many Convs unfused.
    """

    mode: Mode | None = None
    activations: ActivationType = ActivationType.UINT8
    weights: WeightType = WeightType.INT8
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999
    op_types: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    subgraphs: bool | None = None
    preprocess: bool = True
    # Inputs made static in the output (NPU providers such as QNN run only static shapes).
    fixed_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    target: Target = Target.GENERIC
    smooth: float | None = None  # SmoothQuant migration strength alpha (static mode), None: off
    sensitive: Sensitive = Sensitive.FLOAT
    # Static: a quantized MatMul/Gemm whose output no quantized op reads writes float (no Q/DQ
    # pair on it). NPUs whose node units need quantized outputs turn this off.
    float_outputs: bool = True
    presets: tuple[str, ...] = ()  # the presets this configuration was built from, for the record

    def to_dict(self) -> dict[str, object]:
        d = {k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v)
             for k, v in asdict(self).items()}
        d["fixed_shapes"] = {name: list(dims) for name, dims in self.fixed_shapes}
        return d


@dataclass(frozen=True)
class DataConfig:
    """How calibration (or evaluation) data is read.

    `source` is a path (.npz file or folder, .npy folder, ONNX test-data folder, image folder),
    a plugin reference (`file.py:function` or `package.module:function`) or `synthetic`.
    """

    source: str
    max_samples: int | None = None
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout | None = None
    ignore_keys: tuple[str, ...] = field(default=())
    seed: int = 0
    labels: str | None = None  # key of per-sample class labels stored beside the inputs (evaluation)
    allow_nonfinite: bool = False  # accept NaN/Inf in the samples instead of refusing them

    def shape_overrides(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["shapes"] = {name: list(dims) for name, dims in self.shapes}
        d["layout"] = self.layout.value if self.layout else None
        for key in ("image_size", "mean", "std", "ignore_keys"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


@dataclass(frozen=True)
class EPConfig:
    """Where a model runs: provider, its options (`device_type=NPU`, …) and intra-op threads."""

    provider: str = "cpu"
    options: tuple[tuple[str, str], ...] = ()
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")

    def to_dict(self) -> dict[str, object]:
        return {"provider": self.provider, "options": dict(self.options), "threads": self.threads}


@dataclass(frozen=True)
class Gates:
    """Thresholds a quantized model must meet; None means not checked."""

    min_cosine: float | None = None  # mean cosine similarity, every output
    max_drop: float | None = None  # top-1 accuracy drop in points (needs labels)
    min_sqnr: float | None = None  # dB, every output

    def to_dict(self) -> dict[str, object]:
        return {"min_cosine": self.min_cosine, "max_drop": self.max_drop, "min_sqnr": self.min_sqnr}


@dataclass(frozen=True)
class ValidateConfig:
    gates: Gates = field(default_factory=Gates)
    ep: EPConfig = field(default_factory=EPConfig)  # where the quantized model runs
    min_provider_share: float | None = None  # gate: share of the quantized model's nodes on `ep` (not the CPU)

    def __post_init__(self) -> None:
        _check_share(self.min_provider_share)


def _check_share(share: float | None) -> None:
    if share is not None and not 0.0 <= share <= 1.0:
        raise UsageError(f"--min-provider-share takes a share of the nodes in [0, 1], got {share}",
                         hint="e.g. 0.9: nine nodes in ten on the provider")


DEFAULT_RUNS = 100


@dataclass(frozen=True)
class BenchmarkConfig:
    runs: int | None = None  # timed runs per model; DEFAULT_RUNS when neither this nor duration is set
    duration: float | None = None  # or: seconds of timed runs per model
    warmup: int = 5
    batch: int = 1
    ep: EPConfig = field(default_factory=EPConfig)
    min_speedup: float | None = None  # every model after the first vs the first (median latency ratio)
    min_provider_share: float | None = None  # gate: share of each model's nodes on `ep` (not the CPU)
    # The first model is only a reference (the FP32 original, in the pipeline): where it ran is
    # reported, but only the others must run on the provider.
    reference_first: bool = False

    def __post_init__(self) -> None:
        if self.runs is not None and self.duration is not None:
            raise UsageError("give --runs or --duration, not both")
        if (self.runs is not None and self.runs < 1) or (self.duration is not None and self.duration <= 0):
            raise UsageError("--runs must be at least 1 and --duration above 0")
        if self.batch < 1 or self.warmup < 0:
            raise UsageError("--batch must be at least 1 and --warmup at least 0")
        _check_share(self.min_provider_share)

    def to_dict(self) -> dict[str, object]:
        return {"runs": self.runs if self.runs or self.duration else DEFAULT_RUNS, "duration": self.duration,
                "warmup": self.warmup, "batch": self.batch, "ep": self.ep.to_dict(), "min_speedup": self.min_speedup,
                "min_provider_share": self.min_provider_share, "reference_first": self.reference_first}


DEFAULT_MAX_TRIALS = 12


@dataclass(frozen=True)
class SearchConfig:
    """What the search must reach, on which data, and how much it may spend."""

    evaluation: DataConfig
    gates: Gates
    max_trials: int = DEFAULT_MAX_TRIALS  # quantize + validate rounds, the first (nothing kept) included
    analyze_samples: int = 32  # evaluation samples used to rank nodes
    benchmark_runs: int = 50  # timed runs per trial model at the end; 0 skips timing

    def __post_init__(self) -> None:
        if self.gates.min_cosine is None and self.gates.max_drop is None and self.gates.min_sqnr is None:
            raise UsageError("the accuracy search needs a target", hint="add --min-cosine, --max-drop or --min-sqnr")
        if self.max_trials < 1:
            raise UsageError(f"--max-trials must be at least 1, got {self.max_trials}")

    def to_dict(self) -> dict[str, object]:
        return {"evaluation": self.evaluation.source, "target": self.gates.to_dict(), "max_trials": self.max_trials,
                "analyze_samples": self.analyze_samples, "benchmark_runs": self.benchmark_runs}


@dataclass(frozen=True)
class PipelineJob:
    """Everything one model's run needs. `providers` are where the quantized model is validated
    and benchmarked (each in turn); `benchmark.ep` is replaced by each of them."""

    model: Path
    output: Path
    config: QuantizeConfig = field(default_factory=QuantizeConfig)
    calibration: DataConfig | None = None
    evaluation: DataConfig | None = None  # validate against FP32 on this
    gates: Gates = field(default_factory=Gates)
    providers: tuple[EPConfig, ...] = (EPConfig(),)
    search: SearchConfig | None = None
    benchmark: BenchmarkConfig | None = None
    analyze: bool = False  # rank nodes by their own error on the evaluation data
    force: bool = False

    def __post_init__(self) -> None:
        if not self.providers:
            raise UsageError("no execution provider to run on")
        gated = any(v is not None for v in (self.gates.min_cosine, self.gates.max_drop, self.gates.min_sqnr))
        if (self.analyze or gated) and self.evaluation is None and self.search is None:
            raise UsageError("accuracy gates and --analyze need evaluation data",
                             hint="add --eval-data DATA or --validate DATA")

    def to_dict(self) -> dict[str, object]:
        """The resolved configuration, as the report shows it."""
        return {
            "model": str(self.model), "output": str(self.output), "quantize": self.config.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "gates": self.gates.to_dict(), "providers": [p.to_dict() for p in self.providers],
            "search": self.search.to_dict() if self.search else None,
            "benchmark": self.benchmark.to_dict() if self.benchmark else None, "analyze": self.analyze,
        }
