"""Fuzzing `load_model` with mutated model bytes: whatever the file holds, the answer is a
LoadedModel or a ModelError, never another exception (a crash, a traceback, exit 1).

The strategy and the property are shared with `bench/fuzz.py`, which runs them far longer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qconvert.errors import ModelError
from qconvert.model.loading import LoadedModel, load_model
from tests import models

SEEDS = [
    models.mlp(hidden=8).SerializeToString(),
    models.with_if_subgraph().SerializeToString(),
    models.constant_weights().SerializeToString(),
    models.masked_scores().SerializeToString(),
]
# Bytes that mean something to protobuf: varint continuation, length prefixes, field tags.
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x3A, 0x42]


@st.composite
def mutated_models(draw: st.DrawFn) -> bytes:
    """A seed model with one to four mutations: bit flips, truncation, insertion of random bytes,
    splices from another seed, and overwrites with protobuf-significant bytes."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "overwrite"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, len(other) - 1))
            end = draw(st.integers(start, min(len(other), start + 256)))
            data[pos:pos + draw(st.integers(0, 64))] = other[start:end]
        else:
            data[pos] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


def loads_or_refuses(data: bytes) -> None:
    """The property: `load_model` of these bytes returns a LoadedModel or raises ModelError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(data)
        try:
            loaded = load_model(path)
        except ModelError:
            return
        if not isinstance(loaded, LoadedModel):
            raise TypeError(f"load_model returned {type(loaded).__name__}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_models())
def test_mutated_model_bytes_load_or_raise_model_error(data: bytes) -> None:
    loads_or_refuses(data)


def test_the_seeds_themselves_load() -> None:
    for seed in SEEDS:
        loads_or_refuses(seed)
