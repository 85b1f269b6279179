"""What makes a model a language-model decoder, read from its graph's inputs and outputs.

A decoder takes integer token ids and returns `logits` [batch, seq, vocab]. With a KV cache it
also takes, per layer, a past key and value [batch, kv_heads, past_seq, head_size] and returns
the present ones [batch, kv_heads, past_seq + seq, head_size]; without one it recomputes the whole
sequence on every call. Exporters name the cache tensors differently (onnxruntime-genai and
Optimum: `past_key_values.3.key` → `present.3.key`; others `past.3.key`, `past_key.3` →
`present_key.3`, `past_key_3` …), so past and present are paired by what their names say, not by
one spelling: the layer index (the one number in the name) and the role (key or value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ModelError
from qconvert.model.folders import genai_config, model_folder

if TYPE_CHECKING:
    import onnx

_HINT = ("export the model as a decoder with logits (and, for a KV cache, past/present pairs), "
         "e.g. with onnxruntime-genai's model builder")
_FLOAT_CACHES = (np.dtype(np.float32), np.dtype(np.float16))
_ATTENTION_OPS = ("GroupQueryAttention", "MultiHeadAttention", "Attention")


@dataclass(frozen=True)
class KVPair:
    """One layer's cache: the past tensors the model reads and the present ones it returns."""

    layer: int
    past_key: str
    past_value: str
    present_key: str
    present_value: str

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "past_key": self.past_key, "past_value": self.past_value,
                "present_key": self.present_key, "present_value": self.present_value}


@dataclass(frozen=True)
class DecoderSignature:
    """The names and sizes a caller needs to run a decoder, token by token or window by window.

    `layers` is empty for a decoder without a KV cache. `kv_heads` and `head_size` are the past
    tensors' static dims 1 and 3 when every layer agrees (else an attention node's attributes, or
    None); `grouped` is whether query heads outnumber KV heads (grouped-query attention), None
    when the graph does not say. `extra_inputs` are inputs none of the above: a caller cannot fill them.
    """

    input_ids: str
    attention_mask: str | None
    position_ids: str | None
    logits: str
    vocab: int | None
    layers: tuple[KVPair, ...]
    kv_heads: int | None
    head_size: int | None
    kv_dtype: np.dtype[np.generic] | None
    query_heads: int | None
    grouped: bool | None
    extra_inputs: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        """Layers with a KV cache (0 for a decoder without one)."""
        return len(self.layers)

    @property
    def has_cache(self) -> bool:
        return bool(self.layers)

    def past_inputs(self) -> tuple[str, ...]:
        """Past inputs in layer order, key before value."""
        return tuple(name for pair in self.layers for name in (pair.past_key, pair.past_value))

    def present_outputs(self) -> tuple[str, ...]:
        """Present outputs in the order of `past_inputs`."""
        return tuple(name for pair in self.layers for name in (pair.present_key, pair.present_value))

    def to_dict(self) -> dict[str, object]:
        return {
            "input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
            "logits": self.logits, "vocab": self.vocab, "num_layers": self.num_layers,
            "kv_cache": self.has_cache, "layers": [p.to_dict() for p in self.layers],
            "kv_heads": self.kv_heads, "head_size": self.head_size,
            "kv_dtype": None if self.kv_dtype is None else str(self.kv_dtype),
            "query_heads": self.query_heads, "grouped": self.grouped, "extra_inputs": list(self.extra_inputs),
        }


class _NotDecoder(Exception):
    """The model lacks what every decoder has (token ids in, logits out)."""


def decoder_signature(model: onnx.ModelProto, path: str | Path | None = None) -> DecoderSignature | None:
    """The model's decoder signature; None when it is not a decoder (no logits output or no integer
    token-id input). A decoder whose KV cache does not pair up raises ModelError. With the model's
    `path`, cache dims the graph leaves symbolic come from a genai_config.json beside it."""
    try:
        signature = _read(model, str(path or "the model"))
    except _NotDecoder:
        return None
    return _completed(signature, Path(path)) if path is not None else signature


def require_decoder(model: onnx.ModelProto, path: str | Path) -> DecoderSignature:
    """The model's decoder signature, or a one-line ModelError naming what is missing. Cache dims the
    graph leaves symbolic (onnxruntime-genai's `kv_cache_dim`) come from the genai_config.json beside
    the model, when there is one."""
    try:
        signature = _read(model, str(path))
    except _NotDecoder as exc:
        raise ModelError(f"{path} is not a language-model decoder: {exc}", hint=_HINT) from None
    return _completed(signature, Path(path))


def _completed(signature: DecoderSignature, path: Path) -> DecoderSignature:
    """`signature` with the cache dims it lacks taken from the genai_config.json beside `path`."""
    if not signature.has_cache or (signature.kv_heads is not None and signature.head_size is not None):
        return signature
    decoder = _genai_decoder(path.parent)
    heads, size = decoder.get("num_key_value_heads"), decoder.get("head_size")
    return replace(signature, kv_heads=signature.kv_heads or (heads if isinstance(heads, int) else None),
                   head_size=signature.head_size or (size if isinstance(size, int) else None))


def _genai_decoder(folder: Path) -> dict[str, object]:
    """The `model.decoder` section of the onnxruntime-genai config in `folder`; empty when there is none."""
    if model_folder(folder / "model.onnx") is None:
        return {}
    model = genai_config(folder).get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    return decoder if isinstance(decoder, dict) else {}


def layer_and_role(name: str) -> tuple[int | None, str | None, str | None]:
    """What a cache tensor's name says: (layer index, "key" / "value", "past" / "present" / "cross").

    The layer is the one number in the name (None when there is none, or several); the role a word
    `key`/`k` or `value`/`v` (`key_values` names the whole cache, not a role); the kind whether it is
    read (`past`, `cache`), returned (`present`) or an encoder's cross-attention cache.
    """
    words = re.findall(r"[a-z]+|\d+", name.lower().replace("key_values", "kv").replace("key_value", "kv"))
    numbers = [w for w in words if w.isdigit()]
    layer = int(numbers[0]) if len(numbers) == 1 else None
    keys, values = {"key", "keys", "k"} & set(words), {"value", "values", "v"} & set(words)
    role = "key" if keys and not values else "value" if values and not keys else None
    if {"cross", "encoder"} & set(words):
        kind: str | None = "cross"
    elif "present" in words:
        kind = "present"
    elif "past" in words or "cache" in words:
        kind = "past"
    else:
        kind = None
    return layer, role, kind


def _words(name: str) -> set[str]:
    return set(re.findall(r"[a-z]+", name.lower()))


def _elem_dtype(value: onnx.ValueInfoProto) -> np.dtype[np.generic] | None:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim)


def _is_int(value: onnx.ValueInfoProto) -> bool:
    dtype = _elem_dtype(value)
    return dtype is not None and dtype.kind in "iu"


def _is_int_or_bool(value: onnx.ValueInfoProto) -> bool:
    """Flags such as Optimum's `use_cache_branch` name the cache but are not one."""
    dtype = _elem_dtype(value)
    return dtype is not None and dtype.kind in "iub"


def _find_logits(outputs: list[onnx.ValueInfoProto]) -> onnx.ValueInfoProto | None:
    exact = [o for o in outputs if o.name == "logits"]
    if exact:
        return exact[0]
    return next((o for o in outputs if {"logits", "logit"} & _words(o.name)
                 and (_dims(o) is None or len(_dims(o) or ()) == 3)), None)


def _find_ids(inputs: list[onnx.ValueInfoProto]) -> onnx.ValueInfoProto | None:
    exact = [i for i in inputs if i.name == "input_ids" and _is_int(i)]
    if exact:
        return exact[0]
    return next((i for i in inputs if _is_int(i) and {"ids", "input", "tokens"} & _words(i.name)
                 and not {"position", "type", "attention", "mask", "past", "cache"} & _words(i.name)), None)


def _read(model: onnx.ModelProto, where: str) -> DecoderSignature:
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    outputs = list(model.graph.output)
    logits = _find_logits(outputs)
    if logits is None:
        raise _NotDecoder(f"it has no `logits` output (outputs: {', '.join(o.name for o in outputs) or 'none'})")
    ids = _find_ids(inputs)
    if ids is None:
        names = ", ".join(i.name for i in inputs) or "none"
        raise _NotDecoder(f"it has no integer `input_ids` input (inputs: {names})")
    rest = [i for i in inputs if i.name != ids.name]
    mask = next((i.name for i in rest if _is_int(i) and "mask" in _words(i.name)), None)
    positions = next((i.name for i in rest if _is_int(i) and "position" in _words(i.name)), None)
    pasts = [i for i in rest if i.name not in (mask, positions) and not _is_int_or_bool(i)
             and layer_and_role(i.name)[2] in ("past", "cross")]
    extra = tuple(i.name for i in rest if i.name not in (mask, positions) and i not in pasts)
    layers = _pair(pasts, outputs, where)
    kv_heads, head_size, kv_dtype = _cache_shape(pasts, where)
    query_heads, attr_kv_heads = _attention_heads(model)
    kv_heads = kv_heads if kv_heads is not None else attr_kv_heads
    grouped = None if query_heads is None or kv_heads is None else query_heads != kv_heads
    vocab_dims = _dims(logits)
    return DecoderSignature(
        input_ids=ids.name, attention_mask=mask, position_ids=positions, logits=logits.name,
        vocab=vocab_dims[-1] if vocab_dims else None, layers=layers, kv_heads=kv_heads, head_size=head_size,
        kv_dtype=kv_dtype, query_heads=query_heads, grouped=grouped, extra_inputs=extra)


def _pair(pasts: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], where: str) -> tuple[KVPair, ...]:
    """Past inputs matched with present outputs by (layer, role). Present outputs with no past input
    at all are a decoder without a cache that also returns its keys and values (Optimum's first-step
    decoder): nothing to pair."""
    if not pasts:
        return ()
    past = _by_layer_and_role([p.name for p in pasts], "past", where)
    present = _by_layer_and_role([o.name for o in outputs if layer_and_role(o.name)[2] == "present"], "present",
                                 where)
    for key, name in sorted(past.items()):
        if key not in present:
            raise ModelError(f"{where}: past input `{name}` has no matching present output "
                             f"(layer {key[0]} {key[1]})",
                             hint="the model must return the updated cache as present.{layer}.key/value")
    for key, name in sorted(present.items()):
        if key not in past:
            raise ModelError(f"{where}: present output `{name}` has no matching past input "
                             f"(layer {key[0]} {key[1]})", hint="every layer's key and value must be fed back")
    layers = sorted({layer for layer, _ in past})
    for layer in layers:
        for role in ("key", "value"):
            if (layer, role) not in past:
                other = past[(layer, "value" if role == "key" else "key")]
                raise ModelError(f"{where}: layer {layer} has a past {'value' if role == 'key' else 'key'} "
                                 f"(`{other}`) but no past {role}", hint=_HINT)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        raise ModelError(f"{where}: the KV cache has layers {_ranges(layers)} but not "
                         f"{_ranges(missing)}", hint=_HINT)
    return tuple(KVPair(layer, past[(layer, "key")], past[(layer, "value")], present[(layer, "key")],
                        present[(layer, "value")]) for layer in layers)


def _by_layer_and_role(names: list[str], kind: str, where: str) -> dict[tuple[int, str], str]:
    found: dict[tuple[int, str], str] = {}
    unnumbered = [n for n in names if layer_and_role(n)[0] is None]
    for name in names:
        layer, role, what = layer_and_role(name)
        if what == "cross":
            raise ModelError(f"{where}: `{name}` is a cross-attention (encoder) cache; encoder-decoder models "
                             "are not supported", hint="evaluate a decoder-only language model")
        if role is None:
            raise ModelError(f"{where}: cannot tell whether {kind} tensor `{name}` is a key or a value "
                             "(packed key/value caches are not supported)", hint=_HINT)
        if layer is None:
            if len(unnumbered) > 2:  # one layer's key and value may go unnumbered; several layers may not
                raise ModelError(f"{where}: cannot tell the layer of {kind} tensor `{name}`: its name holds "
                                 "no single layer number", hint=_HINT)
            layer = 0
        if (layer, role) in found:
            raise ModelError(f"{where}: {kind} tensors `{found[(layer, role)]}` and `{name}` are both layer "
                             f"{layer}'s {role}", hint=_HINT)
        found[(layer, role)] = name
    return found


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (", …" if len(values) > 8 else "")


def _cache_shape(pasts: list[onnx.ValueInfoProto], where: str
                 ) -> tuple[int | None, int | None, np.dtype[np.generic] | None]:
    if not pasts:
        return None, None, None
    heads: set[int | None] = set()
    sizes: set[int | None] = set()
    dtypes: set[np.dtype[np.generic]] = set()
    for value in pasts:
        dims = _dims(value)
        if dims is not None and len(dims) != 4:
            raise ModelError(f"{where}: past input `{value.name}` has rank {len(dims)}, not 4 "
                             "[batch, kv_heads, past_seq, head_size]", hint=_HINT)
        heads.add(dims[1] if dims else None)
        sizes.add(dims[3] if dims else None)
        dtype = _elem_dtype(value)
        if dtype is None or dtype not in _FLOAT_CACHES:
            raise ModelError(f"{where}: past input `{value.name}` holds {dtype}; qconvert feeds float32 or "
                             "float16 caches", hint="export the cache as float32 or float16")
        dtypes.add(dtype)
    if len(dtypes) > 1:
        raise ModelError(f"{where}: the past inputs mix {' and '.join(sorted(map(str, dtypes)))}",
                         hint="export every layer's cache in one dtype")
    return (heads.pop() if len(heads) == 1 else None), (sizes.pop() if len(sizes) == 1 else None), dtypes.pop()


def _attention_heads(model: onnx.ModelProto) -> tuple[int | None, int | None]:
    """(query heads, KV heads) from the first attention node that states them."""
    for node in model.graph.node:
        if node.op_type not in _ATTENTION_OPS:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.name in ("num_heads", "kv_num_heads", "q_num_heads")}
        query = attrs.get("num_heads") or attrs.get("q_num_heads")
        if query:
            return query, attrs.get("kv_num_heads") or None
    return None, None


class DecoderFeeds:
    """What a decoder call is fed, built the way its signature asks: the token ids, an attention mask
    of ones over past and new tokens, position ids counting on from the past, and the past tensors
    (empty, past_seq 0, on the first call). `dtypes` and `shapes` describe the model's inputs, from a
    session or from the graph (`of_model`)."""

    def __init__(self, signature: DecoderSignature, dtypes: Mapping[str, np.dtype[np.generic]],
                 shapes: Mapping[str, Sequence[object]], *, name: str = "the model") -> None:
        if signature.extra_inputs:
            raise ModelError(f"{name} also needs input(s) qconvert cannot fill: "
                             f"{', '.join(f'`{n}`' for n in signature.extra_inputs)}",
                             hint="export the decoder with only input_ids, attention_mask, position_ids and the "
                                  "past key/values as inputs")
        self.signature, self.dtypes = signature, dict(dtypes)
        self.past_dims: dict[str, tuple[int, int]] = {}
        for past in signature.past_inputs():
            shape = list(shapes.get(past) or [])
            heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else signature.kv_heads
            size = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else signature.head_size
            if heads is None or size is None:
                raise ModelError(f"{name}: past input `{past}` has no static kv_heads and head_size dims "
                                 f"({shape}): qconvert cannot build its empty first-call cache",
                                 hint="export the cache with static head dims [batch, kv_heads, past_seq, head_size]")
            self.past_dims[past] = (heads, size)

    @classmethod
    def of_model(cls, model: onnx.ModelProto, signature: DecoderSignature, *, name: str = "the model"
                 ) -> DecoderFeeds:
        from onnx.helper import tensor_dtype_to_np_dtype

        inputs = {v.name: v for v in model.graph.input}
        dtypes = {n: np.dtype(tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)) for n, v in inputs.items()}
        shapes = {n: list(_dims(v) or ()) for n, v in inputs.items()}
        return cls(signature, dtypes, shapes, name=name)

    def empty_past(self, batch: int) -> tuple[np.ndarray, ...]:
        dtype = self.signature.kv_dtype or np.dtype(np.float32)
        return tuple(np.zeros((batch, heads, 0, size), dtype) for heads, size in self.past_dims.values())

    def __call__(self, ids: np.ndarray, past_length: int = 0, past: tuple[np.ndarray, ...] | None = None
                 ) -> dict[str, np.ndarray]:
        """The feeds for `ids` [batch, seq] after `past_length` cached tokens held in `past` (None: empty)."""
        sig = self.signature
        batch, seq = ids.shape
        feeds = {sig.input_ids: ids.astype(self.dtypes.get(sig.input_ids, np.int64), copy=False)}
        if sig.attention_mask is not None:
            feeds[sig.attention_mask] = np.ones((batch, past_length + seq), self.dtypes.get(sig.attention_mask,
                                                                                            np.int64))
        if sig.position_ids is not None:
            positions = np.arange(past_length, past_length + seq, dtype=self.dtypes.get(sig.position_ids, np.int64))
            feeds[sig.position_ids] = np.broadcast_to(positions, (batch, seq)).copy()
        feeds.update(zip(sig.past_inputs(), self.empty_past(batch) if past is None else past, strict=True))
        return feeds
