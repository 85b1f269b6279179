"""Language-model evaluation: decoder signatures, the KV-cache loop, perplexity, FP32-vs-candidate
comparison, text to token ids, and the interleaved decode benchmark, on tiny seeded decoders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qconvert.calibration.text import (
    check_tokenizer_fits,
    check_tokens,
    tokenizer_vocab,
    tokens_from_file,
    tokens_from_text,
)
from qconvert.config import EPConfig, LanguageConfig
from qconvert.errors import DataError, ModelError, UsageError
from qconvert.measurement import decoding
from qconvert.measurement.language import (
    compare_language,
    log_softmax,
    open_decoder,
    perplexity,
    prompt_starts,
    windows,
)
from qconvert.model.decoder import decoder_signature, layer_and_role, require_decoder
from tests import models

STREAM = np.random.default_rng(7).integers(0, 40, size=30).astype(np.int64)


@pytest.fixture
def decoder_path(tmp_path: Path) -> Path:
    return models.save(models.tiny_decoder(), tmp_path / "decoder.onnx")


@pytest.fixture
def no_cache_path(tmp_path: Path) -> Path:
    return models.save(models.tiny_decoder(cache=False), tmp_path / "no_cache.onnx")


def _io_model(inputs: list[tuple[str, int, list[object]]], outputs: list[tuple[str, int, list[object]]]
              ) -> onnx.ModelProto:
    """A graph of inputs and outputs only: what signature detection reads."""
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    return helper.make_model(graph)


def _cache_io(past: str, present: str, layers: int = 2, kinds: tuple[str, str] = ("key", "value"),
              dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    inputs: list[tuple[str, int, list[object]]] = [("input_ids", TensorProto.INT64, ["b", "s"]),
                                                   ("attention_mask", TensorProto.INT64, ["b", "t"])]
    outputs: list[tuple[str, int, list[object]]] = [("logits", TensorProto.FLOAT, ["b", "s", 50])]
    for layer in range(layers):
        for kind in kinds:
            inputs.append((past.format(layer=layer, kind=kind), dtype, ["b", 4, "p", 8]))
            outputs.append((present.format(layer=layer, kind=kind), dtype, ["b", 4, "t", 8]))
    return _io_model(inputs, outputs)


# --- signatures -------------------------------------------------------------------------------------------


def test_signature_of_a_decoder_with_a_kv_cache() -> None:
    sig = decoder_signature(models.tiny_decoder())
    assert sig is not None
    assert (sig.input_ids, sig.attention_mask, sig.position_ids, sig.logits) == (
        "input_ids", "attention_mask", "position_ids", "logits")
    assert (sig.vocab, sig.num_layers, sig.kv_heads, sig.head_size, sig.kv_dtype) == (40, 2, 2, 8, np.float32)
    assert sig.layers[1].past_value == "past_key_values.1.value" and sig.layers[1].present_value == "present.1.value"
    assert sig.grouped is None and sig.extra_inputs == ()
    d = sig.to_dict()
    assert d["num_layers"] == 2 and d["kv_dtype"] == "float32" and d["kv_cache"] is True


def test_signature_of_a_decoder_without_a_cache() -> None:
    sig = decoder_signature(models.tiny_decoder(cache=False))
    assert sig is not None and not sig.has_cache
    assert (sig.position_ids, sig.num_layers, sig.kv_heads, sig.kv_dtype) == (None, 0, None, None)


def test_a_model_that_is_not_a_decoder_has_no_signature(tmp_path: Path) -> None:
    assert decoder_signature(models.mlp()) is None
    assert decoder_signature(models.residual_block()) is None
    with pytest.raises(ModelError, match=r"has no `logits` output"):
        require_decoder(models.mlp(), tmp_path / "mlp.onnx")
    floats = _io_model([("input_ids", TensorProto.FLOAT, ["b", "s"])], [("logits", TensorProto.FLOAT, [1, 2, 3])])
    with pytest.raises(ModelError, match=r"has no integer `input_ids` input"):
        require_decoder(floats, "m.onnx")


@pytest.mark.parametrize(("past", "present", "kinds"), [
    ("past_key_values.{layer}.{kind}", "present.{layer}.{kind}", ("key", "value")),  # genai, Optimum
    ("past.{layer}.{kind}", "present.{layer}.{kind}", ("key", "value")),
    ("past_{kind}.{layer}", "present_{kind}.{layer}", ("key", "value")),
    ("past_{kind}_{layer}", "present_{kind}_{layer}", ("key", "value")),
    ("past_key_values_{layer}_{kind}", "present_{layer}_{kind}", ("key", "value")),
    ("model.layers.{layer}.past_{kind}", "model.layers.{layer}.present_{kind}", ("k", "v")),
    ("cache_{kind}{layer}", "present_{kind}{layer}", ("k", "v")),
])
def test_past_and_present_pair_by_layer_and_role_whatever_the_naming(past: str, present: str,
                                                                     kinds: tuple[str, str]) -> None:
    sig = decoder_signature(_cache_io(past, present, layers=12, kinds=kinds))
    assert sig is not None and sig.num_layers == 12
    for layer, pair in enumerate(sig.layers):
        assert pair.layer == layer
        assert pair.past_key == past.format(layer=layer, kind=kinds[0])
        assert pair.present_value == present.format(layer=layer, kind=kinds[1])


def test_cache_names_parse_to_layer_role_and_kind() -> None:
    assert layer_and_role("past_key_values.3.key") == (3, "key", "past")
    assert layer_and_role("present.10.value") == (10, "value", "present")
    assert layer_and_role("past_value.7") == (7, "value", "past")
    assert layer_and_role("past_key_values.0.encoder.key")[2] == "cross"


def test_real_models_with_other_cache_names_run(tmp_path: Path) -> None:
    path = models.save(models.tiny_decoder(past="past_{kind}.{layer}", present="present_{kind}.{layer}"),
                       tmp_path / "m.onnx")
    reference = open_decoder(models.save(models.tiny_decoder(), tmp_path / "ref.onnx"), EPConfig())
    renamed = open_decoder(path, EPConfig())
    assert renamed.signature.layers[0].past_key == "past_key.0"
    np.testing.assert_allclose(renamed.forward(STREAM[None, :9])[0], reference.forward(STREAM[None, :9])[0])


def test_a_past_without_its_present_is_refused() -> None:
    model = models.tiny_decoder()
    keep = [o for o in model.graph.output if o.name != "present.1.value"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    with pytest.raises(ModelError, match=r"past input `past_key_values\.1\.value` has no matching present output"):
        require_decoder(model, "m.onnx")
    with pytest.raises(ModelError):
        decoder_signature(model)


def test_broken_caches_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ModelError, match=r"the KV cache has layers 0, 1, 3 but not 2"):
        require_decoder(_drop_layer(2), "m.onnx")
    with pytest.raises(ModelError, match=r"mix float16 and float32"):
        model = _cache_io("past.{layer}.{kind}", "present.{layer}.{kind}")
        model.graph.input[2].type.tensor_type.elem_type = TensorProto.FLOAT16
        require_decoder(model, "m.onnx")
    with pytest.raises(ModelError, match=r"encoder-decoder models are not supported"):
        require_decoder(_cache_io("past_key_values.{layer}.encoder.{kind}", "present.{layer}.encoder.{kind}"),
                        "m.onnx")


def _drop_layer(layer: int) -> onnx.ModelProto:
    model = _cache_io("past.{layer}.{kind}", "present.{layer}.{kind}", layers=4)
    for values in (model.graph.input, model.graph.output):
        keep = [v for v in values if f".{layer}." not in v.name]
        del values[:]
        values.extend(keep)
    return model


def test_present_outputs_without_past_inputs_are_a_decoder_without_a_cache() -> None:
    model = _io_model([("input_ids", TensorProto.INT64, ["b", "s"])],
                      [("logits", TensorProto.FLOAT, ["b", "s", 50]),
                       ("present.0.key", TensorProto.FLOAT, ["b", 4, "s", 8])])
    sig = decoder_signature(model)
    assert sig is not None and not sig.has_cache and sig.vocab == 50


def test_grouped_query_attention_is_read_from_the_attention_node() -> None:
    model = models.tiny_decoder()
    sig = decoder_signature(model)
    assert sig is not None and sig.grouped is None
    model.graph.node.append(helper.make_node("GroupQueryAttention", ["q"], ["o"], domain="com.microsoft",
                                             num_heads=8, kv_num_heads=2))
    sig = decoder_signature(model)
    assert sig is not None and (sig.query_heads, sig.kv_heads, sig.grouped) == (8, 2, True)
    plain = models.tiny_decoder()
    plain.graph.node.append(helper.make_node("MultiHeadAttention", ["q"], ["o"], domain="com.microsoft", num_heads=2))
    sig = decoder_signature(plain)
    assert sig is not None and sig.grouped is False


def test_inputs_qconvert_cannot_fill_are_named(tmp_path: Path) -> None:
    model = models.tiny_decoder()
    model.graph.input.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]))
    sig = decoder_signature(model)
    assert sig is not None and sig.extra_inputs == ("token_type_ids",)
    with pytest.raises(ModelError, match=r"cannot fill: `token_type_ids`"):
        open_decoder(models.save(model, tmp_path / "extra.onnx"), EPConfig())


# --- the KV-cache loop ------------------------------------------------------------------------------------


def test_the_kv_loop_gives_the_logits_of_one_call(decoder_path: Path, no_cache_path: Path) -> None:
    ids = STREAM[None, :12]
    for path in (decoder_path, no_cache_path):
        decoder = open_decoder(path, EPConfig())
        whole, cache = decoder.forward(ids)
        assert whole.shape == (1, 12, 40) and whole.dtype == np.float32 and cache.length == 12
        logits, cache = decoder.forward(ids[:, :5])
        steps = [logits]
        for i in range(5, 12):
            logits, cache = decoder.forward(ids[:, i:i + 1], cache)
            steps.append(logits)
        assert cache.length == 12
        np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-5)
    # With the same seed the two networks are one: the cache-less model recomputes what the cache holds.
    np.testing.assert_allclose(open_decoder(no_cache_path, EPConfig()).forward(ids)[0],
                               open_decoder(decoder_path, EPConfig()).forward(ids)[0], atol=1e-5)


def test_a_float16_cache_is_fed_float16(tmp_path: Path, decoder_path: Path) -> None:
    path = models.save(models.tiny_decoder(float16_cache=True), tmp_path / "fp16.onnx")
    decoder = open_decoder(path, EPConfig())
    assert decoder.signature.kv_dtype == np.float16
    logits, cache = decoder.forward(STREAM[None, :5])
    assert cache.tensors[0].dtype == np.float16
    logits, cache = decoder.forward(STREAM[None, 5:6], cache)
    np.testing.assert_allclose(logits, open_decoder(decoder_path, EPConfig()).forward(STREAM[None, :6])[0][:, 5:],
                               atol=1e-2)


def test_a_batch_runs_through_the_cache(decoder_path: Path) -> None:
    decoder = open_decoder(decoder_path, EPConfig())
    ids = np.stack([STREAM[:6], STREAM[6:12]])
    logits, cache = decoder.forward(ids[:, :4])
    logits, cache = decoder.forward(ids[:, 4:], cache)
    np.testing.assert_allclose(logits, decoder.forward(ids)[0][:, 4:], atol=1e-5)
    assert cache.tensors[0].shape == (2, 2, 6, 8)


# --- perplexity -------------------------------------------------------------------------------------------


def _window_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    """The model run directly by onnxruntime on one window (empty cache)."""
    feeds = {"input_ids": ids[None], "attention_mask": np.ones((1, ids.size), np.int64),
             "position_ids": np.arange(ids.size, dtype=np.int64)[None]}
    for layer in range(2):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = np.zeros((1, 2, 0, 8), np.float32)
    return models.run(path, feeds)[0][0].astype(np.float64)


def _reference_perplexity(path: Path, tokens: np.ndarray, context: int, stride: int) -> tuple[float, int]:
    """Hugging Face's loop, written out: labels before `end - trg_len` masked, then shifted by one."""
    nll: list[float] = []
    prev_end = 0
    for begin in range(0, tokens.size, stride):
        end = min(begin + context, tokens.size)
        target_length = end - prev_end
        logits = _window_logits(path, tokens[begin:end])
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        for p in range(max(end - target_length, begin + 1), end):
            nll.append(-logp[p - begin - 1, tokens[p]])
        prev_end = end
        if end == tokens.size:
            break
    return math.exp(float(np.mean(nll))), len(nll)


def test_one_window_is_the_perplexity_of_one_full_run(decoder_path: Path) -> None:
    logits = _window_logits(decoder_path, STREAM)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = math.exp(-float(np.mean(logp[np.arange(29), STREAM[1:]])))
    # The text must be one token longer than a window; that token alone has no history to be scored with.
    longer = np.append(STREAM, 3)
    got = perplexity(decoder_path, longer, config=LanguageConfig(context=30, prompts=0), ep=EPConfig())
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("context", "stride"), [(12, 12), (12, 5), (10, 1), (8, 7)])
def test_windowed_perplexity_matches_the_reference_loop(decoder_path: Path, context: int, stride: int) -> None:
    expected, scored = _reference_perplexity(decoder_path, STREAM, context, stride)
    config = LanguageConfig(context=context, stride=stride)
    assert sum(w.end - w.first for w in windows(STREAM.size, config)) == scored
    assert perplexity(decoder_path, STREAM, config=config, ep=EPConfig()) == pytest.approx(expected, rel=1e-6)


def test_windows_score_every_token_once_when_they_overlap() -> None:
    spans = [(w.begin, w.end, w.first) for w in windows(30, LanguageConfig(context=12))]
    assert spans == [(0, 12, 1), (12, 24, 13), (24, 30, 25)]  # non-overlapping: a window's first token is lost
    overlapping = windows(30, LanguageConfig(context=12, stride=5))
    scored = [p for w in overlapping for p in range(w.first, w.end)]
    assert scored == list(range(1, 30))
    assert len(windows(30, LanguageConfig(context=12, stride=5, max_windows=2))) == 2


def test_log_softmax_is_stable() -> None:
    out = log_softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0)
    np.testing.assert_allclose(out[1], -math.log(3))


def test_language_config_is_checked() -> None:
    assert LanguageConfig(context=16).step == 16
    for bad in ({"context": 1}, {"context": 8, "stride": 9}, {"stride": 0}, {"max_windows": 0}, {"prompts": -1},
                {"generate_tokens": 0}):
        with pytest.raises(UsageError):
            LanguageConfig(**bad)  # type: ignore[arg-type]


# --- comparison -------------------------------------------------------------------------------------------


CONFIG = LanguageConfig(context=12, stride=6, prompts=3, prompt_tokens=5, generate_tokens=6)


def test_a_model_compared_with_itself_agrees_exactly(decoder_path: Path) -> None:
    result = compare_language(decoder_path, decoder_path, STREAM, config=CONFIG)
    assert result.perplexity_ratio == pytest.approx(1.0, abs=1e-12)
    assert result.kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert (result.top1_agreement, result.generation_agreement, result.identical_generations) == (1.0, 1.0, 3)
    assert (result.tokens, result.windows, result.prompts, result.non_finite_positions) == (29, 4, 3, 0)
    assert result.reference_perplexity == pytest.approx(
        perplexity(decoder_path, STREAM, config=CONFIG, ep=EPConfig()), rel=1e-9)
    d = result.to_dict()
    assert d["perplexity_ratio"] == 1.0 and d["config"] == {**CONFIG.to_dict(), "stride": 6} and d["placement"] is None


def test_a_perturbed_model_is_measured_off(decoder_path: Path, tmp_path: Path) -> None:
    noisy = models.save(models.tiny_decoder(perturb=0.5), tmp_path / "noisy.onnx")
    result = compare_language(decoder_path, noisy, STREAM, config=CONFIG)
    assert result.perplexity_ratio != pytest.approx(1.0, abs=1e-3)
    assert result.top1_agreement < 1.0 and result.kl_divergence > 0.0
    assert result.generation_agreement is not None and 0.0 <= result.generation_agreement <= 1.0


def test_a_candidate_with_non_finite_logits_is_counted_not_a_crash(decoder_path: Path, tmp_path: Path) -> None:
    broken = models.save(models.tiny_decoder(broken=True), tmp_path / "broken.onnx")
    result = compare_language(decoder_path, broken, STREAM, config=CONFIG)
    assert result.non_finite_positions == result.tokens == 29
    assert math.isinf(result.candidate_perplexity) and result.top1_agreement == 0.0
    assert result.generation_agreement == 0.0
    assert result.to_dict()["candidate_perplexity"] is None


def test_a_decoder_without_a_cache_compares_with_one_that_has_it(decoder_path: Path, no_cache_path: Path) -> None:
    result = compare_language(decoder_path, no_cache_path, STREAM, config=CONFIG)
    assert result.perplexity_ratio == pytest.approx(1.0, abs=1e-5) and result.generation_agreement == 1.0


def test_prompts_are_spread_over_the_stream() -> None:
    assert prompt_starts(30, CONFIG) == [0, 12, 25]
    assert prompt_starts(30, LanguageConfig(prompts=1, prompt_tokens=5)) == [0]
    assert prompt_starts(30, LanguageConfig(prompts=0)) == []


def test_comparisons_refuse_tokens_that_do_not_fit(decoder_path: Path) -> None:
    with pytest.raises(DataError, match=r"token 3 of the evaluation tokens is 45"):
        compare_language(decoder_path, decoder_path, np.array([1, 2, 3, 45, 5] * 10), config=CONFIG)
    with pytest.raises(DataError, match=r"text is 8 tokens, shorter than one window of 12\+1"):
        compare_language(decoder_path, decoder_path, STREAM[:8], config=CONFIG)


# --- tokens -----------------------------------------------------------------------------------------------


def test_token_checks_name_what_is_wrong() -> None:
    with pytest.raises(DataError, match=r"token 2 of corpus\.txt is 512, outside the model's vocabulary \[0, 512\)"):
        check_tokens(np.array([0, 1, 512, 600]), 512, 2, "corpus.txt")
    with pytest.raises(DataError, match=r"token 1 of x is -1"):
        check_tokens(np.array([0, -1, 2]), None, 1, "x")
    with pytest.raises(DataError, match=r"^text is 10 tokens, shorter than one window of 256\+1; give more text or "
                                        r"a smaller --context$"):
        check_tokens(np.arange(10), 512, 256, "x")
    check_tokens(np.arange(257), 512, 256, "x")
    with pytest.raises(DataError, match=r"^tokenizer\.json has 50257 tokens but the model's logits have 512: "
                                        r"wrong tokenizer for this model\?$"):
        check_tokenizer_fits(50257, 512)
    check_tokenizer_fits(500, 512)


def test_token_files(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    ids = tokens_from_file(tmp_path / "rows.npy")
    assert ids.dtype == np.int64 and ids.tolist() == list(range(12))
    np.save(tmp_path / "float.npy", np.ones(4, np.float32))
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2), np.int64))
    with pytest.raises(DataError, match=r"must be integers, got float32"):
        tokens_from_file(tmp_path / "float.npy")
    with pytest.raises(DataError, match=r"must be 1-D or 2-D"):
        tokens_from_file(tmp_path / "cube.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError):
        tokens_from_file(tmp_path / "bad.npy")


TEXT = "the cat sat on the mat . the dog sat on the log . a cat and a dog met on a mat .\n" * 3


def _train_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tokenizer_models

    tokenizer = Tokenizer(tokenizer_models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tokenizer.save(str(path))
    return path


def test_text_round_trips_through_a_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = _train_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    ids = tokens_from_text(tmp_path / "text.txt", tokenizer)
    assert ids.dtype == np.int64 and ids.ndim == 1 and ids.size == len(TEXT.split())
    assert Tokenizer.from_file(str(tokenizer)).decode(ids.tolist()) == " ".join(TEXT.split())
    assert tokenizer_vocab(tokenizer) == len(set(TEXT.split())) + 1
    check_tokenizer_fits(tokenizer_vocab(tokenizer), 40)


def test_bad_text_and_tokenizers_are_data_errors(tmp_path: Path) -> None:
    tokenizer = _train_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.txt").write_text(" \n", encoding="utf-8")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 3"):
        tokens_from_text(tmp_path / "latin1.txt", tokenizer)
    with pytest.raises(DataError, match=r"holds no text"):
        tokens_from_text(tmp_path / "empty.txt", tokenizer)
    with pytest.raises(DataError, match=r"is not a valid tokenizer\.json") as caught:
        tokens_from_text(tmp_path / "empty.txt", tmp_path / "broken.json")
    assert "\n" not in caught.value.message
    with pytest.raises(DataError, match=r"tokenizer not found"):
        tokens_from_text(tmp_path / "empty.txt", tmp_path / "missing.json")


def test_a_missing_tokenizers_package_says_how_to_install_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from qconvert.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(MissingDependencyError) as caught:
        tokens_from_text(tmp_path / "t.txt", tmp_path / "tokenizer.json")
    assert caught.value.hint == "pip install 'qconvert[llm]'" and caught.value.exit_code == 4


# --- decode speed -----------------------------------------------------------------------------------------


def test_decode_speed_interleaves_models(decoder_path: Path, no_cache_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    timed = decoding._timed_round

    def record(decoder: decoding.Decoder, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
        calls.append(Path(decoder.name).stem)
        assert prompt.shape == (1, 8)
        return timed(decoder, prompt, new_tokens)

    monkeypatch.setattr(decoding, "_timed_round", record)
    timings = decoding.decode_speed([decoder_path, no_cache_path], prompt_tokens=8, new_tokens=4, rounds=3,
                                    ep=EPConfig())
    assert calls == ["decoder", "no_cache"] * 4  # one warm-up round per model, then rounds side by side
    for timing in timings:
        assert timing.prefill_ms > 0 and timing.decode_tokens_per_s > 0 and timing.decode_speedup > 0
        assert len(timing.prefill_samples_ms) == 3
        assert timing.rss_growth_bytes is None or timing.rss_growth_bytes >= 0
    assert [t.kv_cache for t in timings] == [True, False] and timings[0].decode_speedup == 1.0
    assert timings[1].to_dict()["path"] == str(no_cache_path)


def test_decode_speed_prompts_from_given_tokens(decoder_path: Path) -> None:
    [timing] = decoding.decode_speed([decoder_path], prompt_tokens=6, new_tokens=2, rounds=1, ep=EPConfig(),
                                     tokens=STREAM)
    assert timing.prefill_ms > 0
    with pytest.raises(DataError, match=r"the prompt needs 64 tokens but the text has 30"):
        decoding.decode_speed([decoder_path], prompt_tokens=64, rounds=1, ep=EPConfig(), tokens=STREAM)
    with pytest.raises(DataError, match=r"token id 99, outside"):
        decoding.decode_speed([decoder_path], prompt_tokens=4, rounds=1, ep=EPConfig(), tokens=np.array([1, 99, 2, 3]))
