"""Typed configuration: enums for every choice, frozen dataclasses for every option set."""

from __future__ import annotations

import math
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
    WEIGHT_ONLY = "weight-only"  # block-wise 4/8-bit weights, float activations (language models)
    QAT = "qat"  # a QAT export's float weights behind Q/DQ stored as integers, with the trained scales


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


class WeightForm(StrEnum):
    """How weight-only quantization is written: onnxruntime's `MatMulNBits` / `GatherBlockQuantized`
    (its fast CPU kernels), or standard `DequantizeLinear` (blocked int4, opset 21) → MatMul for NPUs
    and runtimes without onnxruntime's contrib ops."""

    NBITS = "nbits"
    QDQ = "qdq"


class ScaleType(StrEnum):
    """The float type of weight-only block scales: float32, or float16 (2 bytes less per block: the
    quantized MatMuls and embedding lookups then run on float16 activations, cast in and out)."""

    FP32 = "fp32"
    FP16 = "fp16"


class WeightMethod(StrEnum):
    """How weight-only blocks are chosen: round to nearest, or GPTQ (calibration text: each weight row's
    rounding error is carried onto the rows not yet rounded, weighted by the activations' covariance)."""

    RTN = "rtn"
    GPTQ = "gptq"


# Block sizes onnxruntime's MatMulNBits takes, and accuracy levels: 0 unset, 1 fp32, 2 fp16, 3 bf16,
# 4 int8 activations (the CPU's fast path).
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
FAST_ACCURACY_LEVEL = 4
# The mix GPTQ makes by default in a 4-bit model: 6.25 bits per weight on average, 5.1x smaller than
# float32. On SmolLM2-135M (bench/llm.py) all-4-bit GPTQ keeps 85.3 % greedy top-1 agreement
# (1.059x perplexity); this mix 90.1 % (1.030x), with 53 of 151 weights in 8 bits.
MIX_BITS = 6.25


def mixable(bits: int, method: WeightMethod, form: WeightForm) -> bool:
    """Whether a weight-only model can take GPTQ's mix of 8-bit weights (`bits_per_weight`): 4-bit
    MatMulNBits weights, solved by GPTQ, whose output errors rank them."""
    return bits == 4 and method is WeightMethod.GPTQ and form is WeightForm.NBITS


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weight-only quantization (`mode=weight-only`): MatMul and embedding-Gather weights in blocks of
    `block_size` along the input dimension, `bits` each, with a scale (and, asymmetric, a zero point)
    per block; activations stay float. `eight_bit` names nodes written with 8 bits in a 4-bit model
    (the sensitive ones); `bits_per_weight` lets GPTQ raise more of them, the most sensitive by its
    own output error per added byte, while the quantized weights average at most that many bits
    (scales included; see weight_only.mixed_eight_bit); `accuracy_level` is MatMulNBits' compute type
    (4: int8 activations, the fast CPU kernel; 0: onnxruntime's default, float)."""

    bits: int = 4
    block_size: int | None = None  # None: 32 for 4 bits; for 8 bits (whose scales would cost 12 % more bytes
    # at 32) the largest of 128, 64, 32 that divides the embedding width (see weight_only.default_blocks)
    # Symmetric by default: no zero points, so smaller and faster, and on SmolLM2-135M and the sample
    # decoder more accurate too (bench/llm.py).
    symmetric: bool = True
    method: WeightMethod = WeightMethod.RTN
    # GPTQ's act-order: rows solved from the most active input down, on grids fixed beforehand
    # (SmolLM2-135M, int4: 1.059x perplexity against 1.138x in order; bench/llm.py)
    act_order: bool = True
    accuracy_level: int = FAST_ACCURACY_LEVEL
    form: WeightForm = WeightForm.NBITS
    scales: ScaleType = ScaleType.FP32
    embeddings: bool = True  # quantize embedding tables read by Gather too
    eight_bit: tuple[str, ...] = ()
    bits_per_weight: float | None = None  # None: no mix (the command line's default with GPTQ: MIX_BITS)

    def __post_init__(self) -> None:
        if self.bits_per_weight is not None and not (math.isfinite(self.bits_per_weight) and self.bits_per_weight >= 0):
            raise UsageError(f"--bits-per-weight must be a finite number of bits, got {self.bits_per_weight}",
                             hint=f"{MIX_BITS:g} is the default with GPTQ; 4 raises no weight to 8 bits")
        if self.bits_per_weight is not None and not mixable(self.bits, self.method, self.form):
            raise UsageError("--bits-per-weight mixes 8-bit weights into a 4-bit MatMulNBits model by GPTQ's output "
                             "error", hint="use it with --weights int4 and --calib-text (GPTQ), in the nbits form")
        if self.bits not in (4, 8):
            raise UsageError(f"weight-only quantization writes 4- or 8-bit weights, not {self.bits}-bit",
                             hint="use --weights int4 or --weights int8")
        if self.blocks not in BLOCK_SIZES:
            raise UsageError(f"--block-size must be a power of two from 16 to 256, got {self.block_size}",
                             hint="32 keeps the most accuracy, 128 is smaller and as fast")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UsageError(f"--accuracy-level takes 0-4, got {self.accuracy_level}",
                             hint="4 (int8 activations) is the fast CPU path; 0 leaves it to onnxruntime")
        if self.form is WeightForm.QDQ and self.scales is ScaleType.FP16:
            raise UsageError("the QDQ form keeps float32 scales (its MatMuls stay float32)",
                             hint="drop --scales fp16, or use --weight-form nbits")
        if self.form is WeightForm.QDQ and self.bits != 4:
            raise UsageError("the QDQ form writes blocked int4 weights (onnxruntime's quantizer has no 8-bit QDQ "
                             "form)", hint="use --weights int4, or --weight-form nbits for 8 bits")

    @property
    def blocks(self) -> int:
        """The block size: as given, else the width's default."""
        return self.block_size or (128 if self.bits == 8 else 32)

    def to_dict(self) -> dict[str, object]:
        return {"bits": self.bits, "block_size": self.blocks, "symmetric": self.symmetric,
                "method": self.method.value, "act_order": self.act_order,
                "accuracy_level": self.accuracy_level, "form": self.form.value, "scales": self.scales.value,
                "embeddings": self.embeddings,
                "eight_bit": list(self.eight_bit), "bits_per_weight": self.bits_per_weight}


class FloatType(StrEnum):
    """The 16-bit float type `convert` writes."""

    FP16 = "fp16"
    BF16 = "bf16"


FP16_MAX = 65504.0  # the largest finite float16
FP16_TINY = 2.0 ** -14  # the smallest normal float16: below it, values lose bits, then flush to zero
# Activations beyond this on the calibration data keep their nodes in float32: float16 ends at 65504,
# and the 16x headroom covers inputs past the calibration set and the sums inside the node.
ACTIVATION_LIMIT = FP16_MAX / 16


@dataclass(frozen=True)
class FloatConfig:
    """How `convert` writes a model in 16-bit floats (`to`), and what stays float32.

    `io_float32` keeps float32 inputs and outputs with casts inside (a drop-in replacement);
    `keep_float` holds node-name globs and op types kept in float32 by hand; `provider` names the
    execution provider the model is for: nodes whose op has no 16-bit kernel there stay float32.
    `activation_limit` applies to float16 with calibration data (bfloat16 has float32's range)."""

    to: FloatType = FloatType.FP16
    io_float32: bool = True
    keep_float: tuple[str, ...] = ()
    provider: str | None = None
    activation_limit: float = ACTIVATION_LIMIT

    def __post_init__(self) -> None:
        if not 0 < self.activation_limit <= FP16_MAX:
            raise UsageError(f"--max-activation must be in (0, {FP16_MAX:g}], got {self.activation_limit:g}",
                             hint=f"the default, {ACTIVATION_LIMIT:g}, leaves float16 16x headroom")

    def to_dict(self) -> dict[str, object]:
        return {"to": self.to.value, "io_types": "fp32" if self.io_float32 else self.to.value,
                "keep_float": list(self.keep_float), "provider": self.provider,
                "activation_limit": self.activation_limit}


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
    weight_only: WeightOnlyConfig = field(default_factory=WeightOnlyConfig)  # mode=weight-only only

    def to_dict(self) -> dict[str, object]:
        d = {k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v)
             for k, v in asdict(self).items()}
        d["fixed_shapes"] = {name: list(dims) for name, dims in self.fixed_shapes}
        d["weight_only"] = self.weight_only.to_dict()
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
    """Thresholds a quantized model must meet; None means not checked. The first three judge outputs on
    evaluation data; the last two a language model on text."""

    min_cosine: float | None = None  # mean cosine similarity, every output
    max_drop: float | None = None  # top-1 accuracy drop in points (needs labels)
    min_sqnr: float | None = None  # dB, every output
    max_ppl_ratio: float | None = None  # perplexity over FP32's, on the evaluation text
    min_top1: float | None = None  # share of positions where the next-token argmax agrees with FP32's

    def __post_init__(self) -> None:
        if self.max_ppl_ratio is not None and self.max_ppl_ratio < 1.0:
            raise UsageError(f"--max-ppl-ratio is a ratio to FP32's perplexity, at least 1, got {self.max_ppl_ratio}",
                             hint="e.g. 1.05: at most 5 % above FP32")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise UsageError(f"--min-top1 is a share of positions in [0, 1], got {self.min_top1}",
                             hint="e.g. 0.9: nine next tokens in ten agree with FP32")

    @property
    def on_outputs(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.max_drop, self.min_sqnr))

    @property
    def on_text(self) -> bool:
        return self.max_ppl_ratio is not None or self.min_top1 is not None

    def to_dict(self) -> dict[str, object]:
        return {"min_cosine": self.min_cosine, "max_drop": self.max_drop, "min_sqnr": self.min_sqnr,
                "max_ppl_ratio": self.max_ppl_ratio, "min_top1": self.min_top1}


@dataclass(frozen=True)
class TextData:
    """Text a language model is evaluated on: a UTF-8 file and the tokenizer.json that turns it into
    token ids (None: the one beside the model), or a .npy of token ids."""

    text: Path | None = None
    tokenizer: Path | None = None
    tokens: Path | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.tokens is None):
            raise UsageError("give the evaluation text as --text FILE (with --tokenizer) or --tokens FILE.npy, "
                             "not both" if self.text else "no evaluation text given",
                             hint="--text eval.txt --tokenizer tokenizer.json, or --tokens ids.npy")
        if self.tokens is not None and self.tokenizer is not None:
            raise UsageError("--tokenizer applies to --text; --tokens are token ids already")

    def to_dict(self) -> dict[str, object]:
        return {"text": None if self.text is None else str(self.text),
                "tokenizer": None if self.tokenizer is None else str(self.tokenizer),
                "tokens": None if self.tokens is None else str(self.tokens)}


@dataclass(frozen=True)
class LanguageConfig:
    """How text is evaluated: windows of `context` tokens `stride` apart (None: `context`, windows that
    do not overlap), at most `max_windows` of them; `prompts` greedy generations of `generate_tokens`
    tokens after `prompt_tokens`-token prompts taken evenly over the text (0 prompts: none)."""

    context: int = 256
    stride: int | None = None
    max_windows: int | None = None
    prompts: int = 4
    prompt_tokens: int = 32
    generate_tokens: int = 16

    def __post_init__(self) -> None:
        if self.context < 2:
            raise UsageError(f"--context must be at least 2 tokens, got {self.context}")
        if self.stride is not None and not 1 <= self.stride <= self.context:
            raise UsageError(f"--stride must be between 1 and --context ({self.context}), got {self.stride}")
        if self.max_windows is not None and self.max_windows < 1:
            raise UsageError(f"--max-windows must be at least 1, got {self.max_windows}")
        if self.prompts < 0:
            raise UsageError(f"--prompts must be 0 or more, got {self.prompts}")
        if self.prompt_tokens < 1 or self.generate_tokens < 1:
            raise UsageError(f"prompts need at least 1 token and generate at least 1, got {self.prompt_tokens} and "
                             f"{self.generate_tokens}")

    @property
    def step(self) -> int:
        return self.stride or self.context

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "stride": self.step}


@dataclass(frozen=True)
class ValidateConfig:
    gates: Gates = field(default_factory=Gates)
    ep: EPConfig = field(default_factory=EPConfig)  # where the quantized model runs
    language: LanguageConfig = field(default_factory=LanguageConfig)  # text validation
    min_provider_share: float | None = None  # gate: share of the quantized model's nodes on `ep` (not the CPU)

    def __post_init__(self) -> None:
        _check_share(self.min_provider_share)


def _check_share(share: float | None) -> None:
    if share is not None and not 0.0 <= share <= 1.0:
        raise UsageError(f"--min-provider-share takes a share of the nodes in [0, 1], got {share}",
                         hint="e.g. 0.9: nine nodes in ten on the provider")


DEFAULT_RUNS = 100


@dataclass(frozen=True)
class DecodeConfig:
    """A language model's generation benchmark: prefill a `prompt_tokens` prompt in one call, then
    generate `new_tokens` greedily one per call through the KV cache; `rounds` timed rounds."""

    prompt_tokens: int = 128
    new_tokens: int = 64
    rounds: int = 5

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.new_tokens < 1 or self.rounds < 1:
            raise UsageError(f"--prompt-tokens, --new-tokens and --runs must be at least 1, got {self.prompt_tokens}, "
                             f"{self.new_tokens} and {self.rounds}")

    def to_dict(self) -> dict[str, object]:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "rounds": self.rounds}


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
    decode: DecodeConfig | None = None  # language models: time prefill and decode instead of one run

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
                "min_provider_share": self.min_provider_share, "reference_first": self.reference_first,
                "decode": self.decode.to_dict() if self.decode else None}


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


class Executor(StrEnum):
    """Where a batch's models run: worker processes on this machine, or tasks on a Dask cluster."""

    LOCAL = "local"
    DASK = "dask"


SEND_LIMIT = 512 * 2**20  # a job's input files up to this size travel with its task (a cluster without shared files)


@dataclass(frozen=True)
class ExecutorConfig:
    """How a batch runs. `dask`: `scheduler` is the address of a running Dask scheduler (None: the
    DASK_SCHEDULER_ADDRESS environment variable, else a local cluster started for the run); each
    model is one task, retried `retries` times when its worker dies; a job's input files up to
    `send_limit` bytes in all travel with the task, for workers that do not see the client's files."""

    kind: Executor = Executor.LOCAL
    scheduler: str | None = None
    retries: int = 2
    send_limit: int = SEND_LIMIT
    connect_seconds: float = 10.0  # to reach the scheduler

    def __post_init__(self) -> None:
        if self.scheduler is not None and self.kind is not Executor.DASK:
            raise UsageError("--scheduler is the address of a Dask scheduler", hint="add --executor dask")
        if self.retries < 0:
            raise UsageError(f"retries must be at least 0, got {self.retries}")

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "scheduler": self.scheduler, "retries": self.retries,
                "send_limit": self.send_limit, "connect_seconds": self.connect_seconds}


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
    calibration_text: TextData | None = None  # weight-only GPTQ reads it
    evaluation_text: TextData | None = None  # validate a language model against FP32 on it
    language: LanguageConfig = field(default_factory=LanguageConfig)  # how evaluation_text is read
    # Weight-only with text gates: the search for 8-bit weights may write and measure this many models.
    text_trials: int = DEFAULT_MAX_TRIALS

    def __post_init__(self) -> None:
        if not self.providers:
            raise UsageError("no execution provider to run on")
        if (self.analyze or self.gates.on_outputs) and self.evaluation is None and self.search is None:
            raise UsageError("accuracy gates and --analyze need evaluation data",
                             hint="add --eval-data DATA or --validate DATA")
        if self.gates.on_text and self.evaluation_text is None:
            raise UsageError("--max-ppl-ratio and --min-top1 need evaluation text",
                             hint="add --text FILE (or --tokens FILE.npy)")
        if self.text_trials < 1:
            raise UsageError(f"--max-trials must be at least 1, got {self.text_trials}")
        if self.calibration is not None and self.calibration_text is not None:
            raise UsageError("--calib and --calib-text are for different modes: give one",
                             hint="--calib DATA for static QDQ, --calib-text FILE for weight-only GPTQ")

    def to_dict(self) -> dict[str, object]:
        """The resolved configuration, as the report shows it."""
        return {
            "model": str(self.model), "output": str(self.output), "quantize": self.config.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "gates": self.gates.to_dict(), "providers": [p.to_dict() for p in self.providers],
            "search": self.search.to_dict() if self.search else None,
            "benchmark": self.benchmark.to_dict() if self.benchmark else None, "analyze": self.analyze,
            "calibration_text": self.calibration_text.to_dict() if self.calibration_text else None,
            "evaluation_text": self.evaluation_text.to_dict() if self.evaluation_text else None,
            "language": self.language.to_dict(), "text_trials": self.text_trials,
        }
