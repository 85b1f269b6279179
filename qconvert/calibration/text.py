"""Text for language models: a UTF-8 file turned into token ids with a Hugging Face `tokenizer.json`,
or token ids saved with numpy, and the checks that the ids fit the model they are fed to.

The ids form one stream (an evaluation slides windows over it; rows of a 2-D .npy are joined in
order). `tokenizers` is an optional dependency (the `llm` extra), imported only when text is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qconvert.calibration.npyfile import NPY_HINT, load_npy
from qconvert.errors import DataError, MissingDependencyError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from qconvert.config import TextData

TokenIds = npt.NDArray[np.int64]
_INSTALL_HINT = "pip install 'qconvert[llm]'"
_INT64_MAX = np.iinfo(np.int64).max


def load_tokenizer(path: Path) -> Tokenizer:
    """A Hugging Face tokenizer from its `tokenizer.json`; a missing package is exit 4, a bad file a DataError."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MissingDependencyError("reading text needs the `tokenizers` package", hint=_INSTALL_HINT) from exc
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}", hint="give the model's tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception (its Rust errors) for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a valid tokenizer.json: {reason}",
                        hint="give the tokenizer.json saved with the model (Hugging Face `tokenizers` format)"
                        ) from None


def tokenizer_vocab(tokenizer: Path) -> int:
    """How many ids the tokenizer can produce, added (special) tokens included."""
    return int(load_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True))


def read_text(path: Path) -> str:
    """The file's text: UTF-8, not empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read text {path}: {exc.strerror or exc}", hint="check the path") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})",
                        hint="convert it, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise DataError(f"{path} holds no text", hint="give a text file with the evaluation text")
    return text.removeprefix("\ufeff")


def tokens_from_text(text: Path, tokenizer: Path) -> TokenIds:
    """The ids `tokenizer` gives the whole of `text`, special tokens added as the tokenizer's own
    post-processor adds them (a BOS for Llama-style tokenizers, nothing for GPT-2): what
    `AutoTokenizer(...)(text)` gives in transformers, so perplexities compare with theirs."""
    model = load_tokenizer(tokenizer)
    content = read_text(text)
    try:
        ids = model.encode(content).ids
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for what it cannot encode
        raise DataError(f"{tokenizer} cannot encode {text}: {exc}", hint="check that the tokenizer fits the text"
                        ) from None
    if not ids:
        raise DataError(f"{tokenizer} turns {text} into no tokens", hint="give more text")
    return np.asarray(ids, dtype=np.int64)


def tokens_from_file(path: Path) -> TokenIds:
    """Token ids saved with numpy.save: a 1-D stream, or 2-D rows joined in order; integers only."""
    if path.suffix.lower() != ".npy":
        raise DataError(f"token ids must be a .npy file, got {path}", hint=NPY_HINT)
    if not path.is_file():
        raise DataError(f"token file not found: {path}", hint="check the path")
    array = load_npy(path)
    if array.ndim not in (1, 2):
        raise DataError(f"{path}: token ids must be 1-D or 2-D, got shape {list(array.shape)}",
                        hint="save the ids as one stream, or one row per document")
    if array.dtype.kind not in "iu":
        raise DataError(f"{path}: token ids must be integers, got {array.dtype}",
                        hint="save them with dtype int64 (or int32)")
    if array.size == 0:
        raise DataError(f"{path} holds no token ids", hint="save a non-empty array")
    if array.dtype.kind == "u" and array.dtype.itemsize == 8 and int(array.max()) > _INT64_MAX:
        raise DataError(f"{path}: token id {int(array.max())} is too large to be one", hint="check the file")
    return np.ascontiguousarray(array, dtype=np.int64).reshape(-1)


def check_tokens(tokens: np.ndarray, vocab: int | None, context: int, what: str) -> None:
    """Refuse ids outside [0, vocab) (naming the first) and a stream shorter than one window of
    `context` tokens plus the one after it."""
    flat = np.asarray(tokens).reshape(-1)
    bad = (flat < 0) if vocab is None else (flat < 0) | (flat >= vocab)
    if bad.any():
        at = int(np.argmax(bad))
        where = f"[0, {vocab})" if vocab is not None else "non-negative ids"
        raise DataError(f"token {at} of {what} is {int(flat[at])}, outside the model's vocabulary {where}",
                        hint="use the tokenizer the model was trained with")
    if flat.size < context + 1:
        raise DataError(f"text is {flat.size} tokens, shorter than one window of {context}+1; give more text or "
                        "a smaller --context",
                        hint=f"--context {flat.size - 1} fits this text" if flat.size >= 3 else "give more text")


def check_tokenizer_fits(tokenizer_vocab: int, model_vocab: int, *, name: str = "tokenizer.json") -> None:
    """Refuse a tokenizer that can produce ids the model has no logits for. A smaller tokenizer is
    fine: models often pad their vocabulary to a multiple of 64 or 128."""
    if tokenizer_vocab > model_vocab:
        raise DataError(f"{name} has {tokenizer_vocab} tokens but the model's logits have {model_vocab}: "
                        "wrong tokenizer for this model?", hint="use the tokenizer.json saved with the model")


def read_tokens(data: TextData, model: Path) -> TokenIds:
    """The token ids of `data`: its .npy, or its text through its tokenizer, or through the
    tokenizer.json beside `model` (an onnxruntime-genai or Hugging Face folder ships one)."""
    if data.tokens is not None:
        return tokens_from_file(data.tokens)
    assert data.text is not None  # TextData holds one of the two
    tokenizer = data.tokenizer or model.parent / "tokenizer.json"
    if data.tokenizer is None and not tokenizer.is_file():
        raise DataError(f"--text needs a tokenizer: no tokenizer.json beside {model}",
                        hint="give the model's tokenizer with --tokenizer tokenizer.json")
    return tokens_from_text(data.text, tokenizer)
