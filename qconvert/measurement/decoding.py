"""Token-generation speed of decoders: prefill latency and decode tokens per second, side by side.

Every model gets its own session and the same prompt. After one warm-up round per model, rounds go
round-robin (round r: A prefills and decodes, then B, …) so a burst of load on the machine hits every
model alike; speedups are medians of per-round ratios to the first model, not ratios of medians.
Decoding is greedy, one token per call through the KV cache (present fed back as past, the attention
mask growing by one each step); a decoder without a cache recomputes its whole sequence per token,
and is timed doing so.

Memory: `rss_growth_bytes` is how much this process's resident set grew from just before the model's
session was created to the peak while it loaded and ran its warm-up round (Linux: VmHWM, reset with
/proc/self/clear_refs before each model; where that reset is refused, the resident set after the
warm-up instead; None off Linux). It is what loading and running that model added to a process that
already holds the models before it: the allocator reusing memory freed earlier can make a later
model's figure smaller, and memory-mapped weights count only once touched. For exact figures,
measure one model per call.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from qconvert import progress
from qconvert.config import EPConfig
from qconvert.errors import DataError, UsageError
from qconvert.measurement.language import Decoder
from qconvert.model.decoder import require_decoder
from qconvert.model.loading import load_model
from qconvert.providers import create_session, quiet_onnxruntime
from qconvert.results import DecodeTiming

PROMPT_SEED = 0
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where that is not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _timed_round(decoder: Decoder, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation of `new_tokens` after `prompt`."""
    start = time.perf_counter()
    logits, cache = decoder.forward(prompt)
    prefill = time.perf_counter() - start
    token = np.array([[int(logits[0, -1].argmax())]], np.int64)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits, cache = decoder.forward(token, cache)
        token = np.array([[int(logits[0, -1].argmax())]], np.int64)
    return prefill, time.perf_counter() - start


def _prompt(tokens: np.ndarray | None, prompt_tokens: int, vocab: int) -> np.ndarray:
    if tokens is None:
        rng = np.random.default_rng(PROMPT_SEED)
        return rng.integers(0, vocab, size=(1, prompt_tokens), dtype=np.int64)
    flat = np.asarray(tokens).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise DataError(f"token ids must be integers, got {flat.dtype}", hint="pass int64 token ids")
    if flat.size < prompt_tokens:
        raise DataError(f"the prompt needs {prompt_tokens} tokens but the text has {flat.size}",
                        hint="give more text or fewer prompt tokens")
    return flat[:prompt_tokens].astype(np.int64)[None]


def _check_prompt(prompt: np.ndarray, decoder: Decoder) -> None:
    high = int(prompt.max())
    if high >= decoder.vocab or int(prompt.min()) < 0:
        raise DataError(f"the prompt holds token id {high}, outside {decoder.name}'s vocabulary [0, {decoder.vocab})",
                        hint="use the tokenizer the model was trained with")


def decode_speed(models: list[Path], *, prompt_tokens: int = 128, new_tokens: int = 64, rounds: int = 5,
                 ep: EPConfig, tokens: np.ndarray | None = None) -> list[DecodeTiming]:
    """Prefill latency and greedy decode speed of each decoder in `models` on `ep`, timed interleaved.

    The prompt is the first `prompt_tokens` of `tokens`, or seeded pseudo-random ids within the
    smallest vocabulary among the models; each model then generates `new_tokens` tokens, one per call.
    """
    if not models:
        raise UsageError("no model to benchmark", hint="give at least one decoder")
    if prompt_tokens < 1 or new_tokens < 1 or rounds < 1:
        raise UsageError(f"prompt tokens, new tokens and rounds must be at least 1, got {prompt_tokens}, "
                         f"{new_tokens} and {rounds}")
    signatures = [require_decoder(load_model(path).proto, path) for path in models]  # before any RSS is read
    static_vocab = min((s.vocab for s in signatures if s.vocab), default=None)
    decoders: list[Decoder] = []
    memory: list[tuple[int | None, str | None]] = []
    prompt: list[np.ndarray] = []  # one, made once the first model can tell its vocabulary
    with quiet_onnxruntime():
        for path, signature in zip(models, signatures, strict=True):
            before = _status_kib("VmRSS")
            peak = _reset_peak()
            decoder = Decoder(create_session(path, ep), signature, name=str(path))
            prompt = prompt or [_prompt(tokens, prompt_tokens, static_vocab or decoder.vocab)]
            _check_prompt(prompt[0], decoder)
            _timed_round(decoder, prompt[0], new_tokens)  # warm-up, not counted
            after = _status_kib("VmHWM" if peak else "VmRSS")
            memory.append((None, None) if before is None or after is None else
                          (max(0, after - before) * 1024, "peak" if peak else "after"))
            decoders.append(decoder)
        prefill: list[list[float]] = [[] for _ in decoders]
        speed: list[list[float]] = [[] for _ in decoders]
        with progress.task("decode benchmark", total=rounds) as step:
            for _ in range(rounds):
                for i, decoder in enumerate(decoders):
                    seconds, decode = _timed_round(decoder, prompt[0], new_tokens)
                    prefill[i].append(seconds)
                    speed[i].append(new_tokens / max(decode, 1e-12))
                step()
    return [DecodeTiming(
        path=str(path), prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=rounds,
        kv_cache=decoder.signature.has_cache, prefill_ms=statistics.median(prefill[i]) * 1000.0,
        decode_tokens_per_s=statistics.median(speed[i]),
        prefill_speedup=statistics.median(a / max(b, 1e-12) for a, b in zip(prefill[0], prefill[i], strict=True)),
        decode_speedup=statistics.median(b / a for a, b in zip(speed[0], speed[i], strict=True)),
        rss_growth_bytes=memory[i][0], memory_measure=memory[i][1],
        prefill_samples_ms=tuple(s * 1000.0 for s in prefill[i]), decode_samples_tokens_per_s=tuple(speed[i]),
    ) for i, (path, decoder) in enumerate(zip(models, decoders, strict=True))]
