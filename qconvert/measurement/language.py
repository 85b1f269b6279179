"""A language model measured as a language model: perplexity on text, and how far a quantized
decoder's next-token distributions and greedy generations are from its FP32 original.

Perplexity slides windows over the token stream the way Hugging Face's guide does: each window of
`context` tokens runs in one call with an empty cache; the first scores every token but its first,
each later one (starting `stride` after the previous) only the tokens no window scored before, so
with `stride < context` every scored token has at least `context - stride` tokens of history.
NLL, KL divergence and agreement are summed in float64 as windows stream: no window's logits
outlive it. Generation runs through the KV cache, a prompt prefilled in one call then one token per
call, both models side by side, stopping at their first disagreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qconvert import progress
from qconvert.calibration.text import check_tokenizer_fits, check_tokens, read_tokens, tokenizer_vocab
from qconvert.config import EPConfig, LanguageConfig, TextData, ValidateConfig
from qconvert.errors import DataError, ModelError, UsageError, first_line
from qconvert.model.decoder import DecoderFeeds, DecoderSignature, require_decoder
from qconvert.model.loading import load_model
from qconvert.providers import create_session, placement, quiet_onnxruntime, resolve
from qconvert.results import Gate, LanguageComparison, ValidateResult, provider_gates

Logits = npt.NDArray[np.float32]
_ROW_BUDGET = 1 << 22  # float64 log-probabilities computed this many at a time (32 MiB)
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
                "tensor(uint64)": np.uint64, "tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class KVCache:
    """What a decoder carries from one call to the next, `length` tokens of it: the present tensors
    (key and value per layer, in `DecoderSignature.past_inputs()` order) or, for a decoder without a
    KV cache, the token ids seen so far [batch, length]."""

    length: int
    tensors: tuple[np.ndarray, ...] = ()
    history: np.ndarray | None = None


class Decoder:
    """A decoder session fed the way its signature asks: attention mask of ones over past and new
    tokens, position ids counting on from the past, empty past tensors (past_seq 0) on the first call.
    A decoder without a KV cache recomputes the whole sequence each call behind the same `forward`."""

    def __init__(self, session: Any, signature: DecoderSignature, *, name: str = "the model") -> None:
        self.session = session
        self.signature = signature
        self.name = name
        inputs = {i.name: i for i in session.get_inputs()}
        dtypes = {n: np.dtype(_NUMPY_TYPES.get(i.type, np.int64)) for n, i in inputs.items()}
        self.feeds = DecoderFeeds(signature, dtypes, {n: list(i.shape or []) for n, i in inputs.items()}, name=name)
        self._outputs = [signature.logits, *signature.present_outputs()]
        self._vocab = signature.vocab

    @property
    def vocab(self) -> int:
        """The logits' last dim: from the graph, or from one call on token 0 when it is dynamic."""
        if self._vocab is None:
            self._vocab = int(self.forward(np.zeros((1, 1), np.int64))[0].shape[-1])
        return self._vocab

    def forward(self, ids: np.ndarray, past: KVCache | None = None) -> tuple[Logits, KVCache]:
        """Logits (float32 [batch, seq, vocab]) for `ids` [batch, seq] after `past`, and the cache
        that now holds them too."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        if not self.signature.has_cache:
            full = ids if past is None or past.history is None else np.concatenate([past.history, ids], axis=1)
            logits = self._run(full, 0, ())[0]
            return logits[:, -ids.shape[1]:], KVCache(full.shape[1], history=full)
        tensors = past.tensors if past is not None else self.feeds.empty_past(ids.shape[0])
        length = past.length if past is not None else 0
        logits, *presents = self._run(ids, length, tensors)
        return logits, KVCache(length + ids.shape[1], tuple(presents))

    def _run(self, ids: np.ndarray, past_length: int, past: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        batch, seq = ids.shape
        feeds = self.feeds(ids, past_length, past)
        try:
            outputs = self.session.run(self._outputs, feeds)
        except Exception as exc:
            raise ModelError(f"{self.name} fails on {seq} token(s) after {past_length} in its cache: "
                             f"{first_line(exc)}",
                             hint="a sequence longer than the model supports fails too: try a smaller --context"
                             ) from exc
        logits = np.asarray(outputs[0])
        if logits.ndim != 3 or logits.shape[:2] != (batch, seq):
            raise ModelError(f"{self.name} returns logits of shape {list(logits.shape)} for {batch}×{seq} token(s); "
                             "qconvert needs [batch, seq, vocab], one row per position",
                             hint="export the decoder with logits for every position")
        return [logits.astype(np.float32, copy=False), *outputs[1:]]


def open_decoder(path: str | Path, ep: EPConfig) -> Decoder:
    """A checked decoder on `ep` (`create_session`: the session measured runs use)."""
    path = Path(path)
    signature = require_decoder(load_model(path).proto, path)
    with quiet_onnxruntime():
        session = create_session(path, ep)
    return Decoder(session, signature, name=str(path))


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) of the stream in one call; the predictions of tokens [first, end) scored."""

    begin: int
    end: int
    first: int


def windows(length: int, config: LanguageConfig) -> list[Window]:
    """The windows over a stream of `length` tokens, Hugging Face's sliding-window way: the first
    scores all its tokens but its first, each later one the tokens not scored before (with
    non-overlapping windows a window's own first token cannot be scored: it has no history there)."""
    found: list[Window] = []
    scored_to = 0
    for begin in range(0, length, config.step):
        end = min(begin + config.context, length)
        first = max(scored_to, begin + 1)
        if first < end:
            found.append(Window(begin, end, first))
        scored_to = end
        if end == length or (config.max_windows is not None and len(found) == config.max_windows):
            break
    return found


def log_softmax(logits: np.ndarray) -> npt.NDArray[np.float64]:
    """log softmax over the last axis in float64, shifted by the row's maximum so exp never overflows."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _chunk(vocab: int) -> int:
    """Rows of logits turned into float64 log-probabilities at a time."""
    return max(1, _ROW_BUDGET // max(vocab, 1))


@dataclass
class _Sums:
    """What the windows add up to, in float64."""

    tokens: int = 0
    ref_nll: float = 0.0
    cand_nll: float = 0.0
    kl: float = 0.0
    kl_tokens: int = 0
    agree: int = 0
    non_finite: int = 0
    windows: int = 0

    def add(self, ref: Logits, cand: Logits, targets: np.ndarray, where: str) -> None:
        size = _chunk(ref.shape[-1])
        for start in range(0, len(targets), size):
            r, c, t = ref[start:start + size], cand[start:start + size], targets[start:start + size]
            rows = np.arange(len(t))
            if not np.isfinite(r).all():
                raise ModelError(f"the reference model's logits are not finite ({where})",
                                 hint="the FP32 model is broken on this text; check it with `qconvert validate`")
            lr = log_softmax(r)
            finite = np.isfinite(c).all(axis=-1)
            self.non_finite += int(np.count_nonzero(~finite))
            self.ref_nll -= float(lr[rows, t].sum())
            self.agree += int(np.count_nonzero((r.argmax(-1) == c.argmax(-1)) & finite))
            self.tokens += len(t)
            if finite.any():
                lc = log_softmax(c[finite])
                lrf = lr[finite]
                self.cand_nll -= float(lc[np.arange(len(lc)), t[finite]].sum())
                self.kl += float((np.exp(lrf) * (lrf - lc)).sum())
                self.kl_tokens += len(lc)

    def comparison(self) -> tuple[float, float, float, float]:
        """Reference and candidate perplexity, mean KL(ref || cand) over finite positions, top-1 agreement."""
        ref = _exp(self.ref_nll / self.tokens)
        cand = math.inf if self.non_finite else _exp(self.cand_nll / self.tokens)
        kl = max(self.kl / self.kl_tokens, 0.0) if self.kl_tokens else math.nan
        return ref, cand, kl, self.agree / self.tokens


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def _stream(tokens: np.ndarray) -> npt.NDArray[np.int64]:
    flat = np.asarray(tokens).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise DataError(f"token ids must be integers, got {flat.dtype}", hint="pass int64 token ids")
    return flat.astype(np.int64, copy=False)


def _check_stream(tokens: np.ndarray, vocab: int, config: LanguageConfig) -> None:
    check_tokens(tokens, vocab, config.context, "the evaluation tokens")
    if config.prompts and tokens.size < config.prompt_tokens:
        raise DataError(f"a prompt of {config.prompt_tokens} tokens does not fit in {tokens.size} tokens of text",
                        hint="give more text or fewer prompt tokens")


def compare_language(reference: str | Path, candidate: str | Path, tokens: np.ndarray, *,
                     config: LanguageConfig | None = None, ep: EPConfig | None = None) -> LanguageComparison:
    """Run `reference` (on the CPU provider) and `candidate` (on `ep`) over the same windows of `tokens`
    and measure how far the candidate's next-token predictions and greedy generations are from the
    reference's. Both must be decoders with the same vocabulary."""
    config, ep = config or LanguageConfig(), ep or EPConfig()
    stream = _stream(tokens)
    ref = open_decoder(reference, EPConfig(threads=ep.threads))
    cand = open_decoder(candidate, ep)
    where = placement(cand.session, resolve(ep.provider))
    if ref.vocab != cand.vocab:
        raise ModelError(f"{candidate} has {cand.vocab} logits but {reference} has {ref.vocab}",
                         hint="compare a model with the model it was quantized from")
    _check_stream(stream, ref.vocab, config)
    sums = _Sums()
    spans = windows(stream.size, config)
    with quiet_onnxruntime(), progress.task("language evaluation", total=len(spans)) as step:
        for index, span in enumerate(spans):
            ids = stream[None, span.begin:span.end]
            rows = slice(span.first - span.begin - 1, span.end - span.begin - 1)
            ref_logits = ref.forward(ids)[0][0, rows]
            cand_logits = cand.forward(ids)[0][0, rows]
            sums.add(ref_logits, cand_logits, stream[span.first:span.end], f"window {index}")
            sums.windows += 1
            step()
    with quiet_onnxruntime():
        agreement, identical, prompts = _generations(ref, cand, stream, config)
    ref_ppl, cand_ppl, kl, top1 = sums.comparison()
    return LanguageComparison(
        reference_path=str(reference), candidate_path=str(candidate), ep=ep, config=config,
        stream_tokens=int(stream.size), tokens=sums.tokens, windows=sums.windows, reference_perplexity=ref_ppl,
        candidate_perplexity=cand_ppl, perplexity_ratio=cand_ppl / ref_ppl, kl_divergence=kl, top1_agreement=top1,
        prompts=prompts, generation_agreement=agreement, identical_generations=identical,
        non_finite_positions=sums.non_finite, placement=where)


def prompt_starts(length: int, config: LanguageConfig) -> list[int]:
    """Where the prompts begin: evenly spaced over the stream, the last one ending at its end."""
    if not config.prompts:
        return []
    last = length - config.prompt_tokens
    return [round(i * last / (config.prompts - 1)) if config.prompts > 1 else 0 for i in range(config.prompts)]


def _generations(ref: Decoder, cand: Decoder, stream: np.ndarray, config: LanguageConfig
                 ) -> tuple[float | None, int | None, int]:
    starts = prompt_starts(stream.size, config)
    if not starts:
        return None, None, 0
    common = []
    with progress.task("generation", total=len(starts)) as step:
        for start in starts:
            common.append(_common_prefix(ref, cand, stream[None, start:start + config.prompt_tokens],
                                         config.generate_tokens))
            step()
    return (sum(common) / (len(common) * config.generate_tokens),
            sum(1 for c in common if c == config.generate_tokens), len(common))


def _common_prefix(ref: Decoder, cand: Decoder, prompt: np.ndarray, new_tokens: int) -> int:
    """How many greedy tokens the two decoders generate alike after `prompt`, up to `new_tokens`."""
    ref_logits, ref_cache = ref.forward(prompt)
    cand_logits, cand_cache = cand.forward(prompt)
    for made in range(new_tokens):
        last = cand_logits[0, -1]
        token = int(ref_logits[0, -1].argmax())
        if not np.isfinite(last).all() or int(last.argmax()) != token:
            return made
        if made + 1 < new_tokens:
            step = np.array([[token]], np.int64)
            ref_logits, ref_cache = ref.forward(step, ref_cache)
            cand_logits, cand_cache = cand.forward(step, cand_cache)
    return new_tokens


def perplexity(model: str | Path, tokens: np.ndarray, *, config: LanguageConfig | None = None,
               ep: EPConfig | None = None) -> float:
    """The model's perplexity on `tokens` over the windows of `config` (inf when its logits are not finite)."""
    config, ep = config or LanguageConfig(), ep or EPConfig()
    stream = _stream(tokens)
    decoder = open_decoder(model, ep)
    _check_stream(stream, decoder.vocab, LanguageConfig(context=config.context, prompts=0))
    nll, count = 0.0, 0
    spans = windows(stream.size, config)
    with quiet_onnxruntime(), progress.task("perplexity", total=len(spans)) as step:
        for span in spans:
            logits = decoder.forward(stream[None, span.begin:span.end])[0][0]
            rows = logits[span.first - span.begin - 1:span.end - span.begin - 1]
            targets = stream[span.first:span.end]
            if not np.isfinite(rows).all():
                return math.inf
            size = _chunk(rows.shape[-1])
            for start in range(0, len(targets), size):
                chunk, t = log_softmax(rows[start:start + size]), targets[start:start + size]
                nll -= float(chunk[np.arange(len(t)), t].sum())
            count += len(targets)
            step()
    return _exp(nll / count)


def validate_language(fp32_model: str | Path, quantized_model: str | Path, text: TextData, *,
                      config: ValidateConfig) -> ValidateResult:
    """`validate` on text: both decoders compared over `text` (perplexity, KL, next-token and greedy
    generation agreement), judged by the perplexity-ratio and top-1 gates."""
    fp32_path, quant_path = Path(fp32_model), Path(quantized_model)
    gates = config.gates
    if gates.on_outputs:
        raise UsageError("--min-cosine, --max-drop and --min-sqnr judge outputs on --data; on text, use "
                         "--max-ppl-ratio and --min-top1")
    signature = require_decoder(load_model(fp32_path).proto, fp32_path)
    if text.text is not None and signature.vocab is not None:
        check_tokenizer_fits(tokenizer_vocab(text.tokenizer or fp32_path.parent / "tokenizer.json"),
                             signature.vocab, name=str(text.tokenizer or "tokenizer.json"))
    tokens = read_tokens(text, fp32_path)
    found = compare_language(fp32_path, quant_path, tokens, config=config.language, ep=config.ep)
    judged = []
    if gates.max_ppl_ratio is not None:
        judged.append(Gate("max_ppl_ratio", gates.max_ppl_ratio, found.perplexity_ratio,
                           found.perplexity_ratio <= gates.max_ppl_ratio))
    if gates.min_top1 is not None:
        judged.append(Gate("min_top1", gates.min_top1, found.top1_agreement, found.top1_agreement >= gates.min_top1))
    judged += provider_gates(found.placement, str(quant_path), config.min_provider_share)
    warnings = []
    if found.non_finite_positions:
        warnings.append(f"the quantized model's logits are NaN or Inf at {found.non_finite_positions} position(s)")
    return ValidateResult(
        fp32_path=str(fp32_path), quantized_path=str(quant_path), data=text.to_dict(), samples=found.windows,
        ep=config.ep, outputs=[], fp32_accuracy=None, quantized_accuracy=None, accuracy_drop=None, gates=judged,
        placement=found.placement, warnings=warnings, language=found)
