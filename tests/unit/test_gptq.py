"""GPTQ: onnxruntime's RTN grid reproduced exactly, GPTQ's output re-packed by onnxruntime without a
change, a clear win over RTN where activations are correlated, and Hessians streamed in passes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: TID251 - the reference

from qconvert.errors import UsageError
from qconvert.providers import cpu_session
from qconvert.quantization.gptq import gptq_quantize, hessians, rtn_codes, rtn_grid, rtn_quantize
from tests import models

FORMATS = list(itertools.product((4, 8), (False, True)))  # bits, symmetric


def _one_matmul(weight: np.ndarray) -> onnx.ModelProto:
    rows, columns = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", columns])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort_pack(weight: np.ndarray, bits: int, block_size: int, symmetric: bool
              ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    """onnxruntime's MatMulNBits packing of `weight` [K, N]: the model, and unpacked codes
    [N, blocks, block_size], scales [N, blocks], zero points [N, blocks] (implied ones if symmetric)."""
    quantizer = MatMulNBitsQuantizer(_one_matmul(weight), bits=bits, block_size=block_size, is_symmetric=symmetric)
    quantizer.process()
    model = quantizer.model.model
    (node,) = model.graph.node
    assert node.op_type == "MatMulNBits"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    columns = weight.shape[1]
    blocks = -(-weight.shape[0] // block_size)
    packed, scales = inits[node.input[1]], inits[node.input[2]].reshape(columns, blocks)
    if bits == 4:
        codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(columns, blocks, block_size)
    else:
        codes = packed.reshape(columns, blocks, block_size)
    if symmetric:
        assert len(node.input) == 3
        zero = np.full((columns, blocks), 1 << (bits - 1), np.uint8)
    else:
        stored = inits[node.input[3]].reshape(columns, -1)
        zero = (np.stack([stored & 15, stored >> 4], axis=-1).reshape(columns, -1)[:, :blocks] if bits == 4
                else stored)
    return model, codes, scales, zero


def _ort_dequantized(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """What onnxruntime's packing of `weight` stands for, [K, N] float32: (code - zero point) * scale."""
    _, codes, scales, zero = _ort_pack(weight, bits, block_size, symmetric)
    values = (codes.astype(np.float32) - zero[:, :, None].astype(np.float32)) * scales[:, :, None]
    return values.reshape(weight.shape[1], -1)[:, :weight.shape[0]].T


def _weights(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Random weights with the awkward columns: all positive, all negative, all zero, constant,
    and the 8-bit block whose scale onnxruntime maps back to itself only 40+ ulps away."""
    w = (rng.standard_normal((rows, columns)) * 0.05).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0])
    w[:, 1] = -np.abs(w[:, 1])
    w[:, 2] = 0
    w[:, 3] = 0.25
    w[:, 4] = rng.uniform(-0.0074397936, 1.3252676, rows).astype(np.float32)
    w[0, 4], w[1, 4] = -0.0074397936, 1.3252676
    return w


def _correlated_inputs(rng: np.random.Generator, tokens: int, width: int) -> np.ndarray:
    """Activations like a transformer's: mixed channels (correlated) and a few 20x outliers."""
    x = rng.standard_normal((tokens, width)) @ rng.standard_normal((width, width)) / np.sqrt(width)
    x[:, rng.choice(width, 4, replace=False)] *= 20
    return x.astype(np.float32)


@pytest.mark.parametrize(("bits", "symmetric"), FORMATS)
@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_rtn_grid_is_onnxruntimes(bits: int, symmetric: bool, block_size: int) -> None:
    rng = np.random.default_rng(bits * 1000 + block_size)
    for rows in (block_size * 2, 200):  # 200: a short, padded last block
        weight = _weights(rng, rows, 40) * np.float32(10.0 ** rng.uniform(-3, 2))
        _, codes, scales, zero = _ort_pack(weight, bits, block_size, symmetric)
        for block, start in enumerate(range(0, rows, block_size)):
            values = weight[start:start + block_size]
            scale, point = rtn_grid(values, bits=bits, symmetric=symmetric)
            np.testing.assert_array_equal(scale, scales[:, block])
            np.testing.assert_array_equal(point, zero[:, block])
            np.testing.assert_array_equal(rtn_codes(values, scale, point, bits=bits),
                                          codes[:, block, :len(values)].T)
        np.testing.assert_array_equal(rtn_quantize(weight, bits=bits, block_size=block_size, symmetric=symmetric),
                                      _ort_dequantized(weight, bits, block_size, symmetric))


@pytest.mark.parametrize(("bits", "symmetric"), FORMATS)
@pytest.mark.parametrize("block_size", [16, 32, 128, 256])
@pytest.mark.parametrize("act_order", [True, False])
def test_onnxruntime_repacks_gptq_output_exactly(bits: int, symmetric: bool, block_size: int, act_order: bool) -> None:
    rng = np.random.default_rng(bits + block_size)
    weight = _weights(rng, 200, 48)  # two lazy batches; the last block padded for every block size
    x = _correlated_inputs(rng, 256, 200)
    snapped = gptq_quantize(weight, x.T.astype(np.float64) @ x, bits=bits, block_size=block_size,
                            symmetric=symmetric, act_order=act_order).weight
    assert snapped.dtype == np.float32
    np.testing.assert_array_equal(_ort_dequantized(snapped, bits, block_size, symmetric), snapped)
    model, *_ = _ort_pack(snapped, bits, block_size, symmetric)  # and MatMulNBits computes x @ snapped
    (y,) = cpu_session(model.SerializeToString()).run(None, {"x": x[:8]})
    np.testing.assert_allclose(y, x[:8] @ snapped, rtol=1e-4, atol=1e-4 * np.abs(y).max())


@pytest.mark.parametrize(("bits", "symmetric"), FORMATS)
def test_gptq_beats_rtn_on_correlated_outlier_heavy_inputs(bits: int, symmetric: bool) -> None:
    rng = np.random.default_rng(7)
    x = _correlated_inputs(rng, 4096, 256)
    weight = (rng.standard_normal((256, 128)) * 0.05).astype(np.float32)
    gptq = gptq_quantize(weight, x.T.astype(np.float64) @ x, bits=bits, block_size=32, symmetric=symmetric).weight
    rtn = rtn_quantize(weight, bits=bits, block_size=32, symmetric=symmetric)

    def error(quantized: np.ndarray) -> float:
        return float(np.linalg.norm(x @ weight - x @ quantized))

    assert error(gptq) < 0.85 * error(rtn)  # about 0.5 measured
    in_order = gptq_quantize(weight, x.T.astype(np.float64) @ x, bits=bits, block_size=32, symmetric=symmetric,
                             act_order=False).weight
    assert error(in_order) < 0.85 * error(rtn)  # about 0.75
    assert error(gptq) < 0.8 * error(in_order)  # act-order: the outlier inputs' rows first; about 0.65


@pytest.mark.parametrize(("bits", "symmetric"), FORMATS)
@pytest.mark.parametrize("hessian", ["identity", "zero"])
def test_without_correlations_gptq_is_rtn(bits: int, symmetric: bool, hessian: str) -> None:
    """H = I: no error flows between rows; H = 0 (no tokens at all): every input is dead. Same codes
    as onnxruntime's RTN; scales within a few ulps (the asymmetric ones GPTQ settles). Symmetric
    4-bit grids are clipped where that rounds closer: never further from W than RTN, still exact."""
    rng = np.random.default_rng(3)
    weight = _weights(rng, 200, 64)
    h = np.eye(200) if hessian == "identity" else np.zeros((200, 200))
    gptq = gptq_quantize(weight, h, bits=bits, block_size=32, symmetric=symmetric).weight
    rtn = rtn_quantize(weight, bits=bits, block_size=32, symmetric=symmetric)
    if symmetric and bits == 4:
        assert np.linalg.norm(gptq - weight) < 0.97 * np.linalg.norm(rtn - weight)
        np.testing.assert_array_equal(_ort_dequantized(gptq, bits, 32, symmetric), gptq)
        return
    np.testing.assert_allclose(gptq, rtn, rtol=1e-5, atol=0)  # 31 ulps in _weights' column 4, 8 bits
    np.testing.assert_array_equal(_ort_pack(gptq, bits, 32, symmetric)[1], _ort_pack(weight, bits, 32, symmetric)[1])


@pytest.mark.parametrize("act_order", [True, False])
def test_the_reported_error_is_the_output_error_left(act_order: bool) -> None:
    """The summed row losses are tr(EᵀHE) for E = W - Ŵ, which the 8-bit mix ranks weights by."""
    rng = np.random.default_rng(11)
    x = _correlated_inputs(rng, 512, 96)
    weight = _weights(rng, 96, 40)
    h = 2 * x.T.astype(np.float64) @ x / len(x)
    solved = gptq_quantize(weight, h, bits=4, block_size=32, symmetric=True, percdamp=0.0, act_order=act_order)
    left = weight.astype(np.float64) - solved.weight
    assert solved.error == pytest.approx(float(np.sum(left * (h @ left))), rel=1e-4)
    eight = gptq_quantize(weight, h, bits=8, block_size=32, symmetric=True, percdamp=0.0, act_order=act_order)
    assert 0 < eight.error < solved.error / 50  # 16x finer steps: about 256x less


def test_dead_inputs_give_finite_weights_on_the_grid() -> None:
    rng = np.random.default_rng(5)
    x = _correlated_inputs(rng, 256, 64)
    x[:, [0, 9, 10, 63]] = 0  # channels the calibration data never lights up
    weight = _weights(rng, 64, 16)
    snapped = gptq_quantize(weight, x.T.astype(np.float64) @ x, bits=4, block_size=16, symmetric=False).weight
    assert np.isfinite(snapped).all()
    np.testing.assert_array_equal(_ort_dequantized(snapped, 4, 16, False), snapped)


def test_bad_arguments_are_refused() -> None:
    weight = np.zeros((32, 4), np.float32)
    with pytest.raises(UsageError, match="4 or 8 bits"):
        gptq_quantize(weight, np.eye(32), bits=3, block_size=32, symmetric=True)
    with pytest.raises(UsageError, match="block size 48"):
        gptq_quantize(weight, np.eye(32), bits=4, block_size=48, symmetric=True)
    with pytest.raises(UsageError, match="Hessian has shape"):
        gptq_quantize(weight, np.eye(16), bits=4, block_size=32, symmetric=True)


def _reference_products(feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, int]]:
    """XᵀX and token counts of `h` and `r` in models.shared_input_matmuls, in numpy."""
    inits = {t.name: numpy_helper.to_array(t) for t in models.shared_input_matmuls().graph.initializer}
    h = np.concatenate([f["x"].reshape(-1, 16) * inits["gain"] for f in feeds]).astype(np.float64)
    r = np.maximum(h @ inits["wa"].astype(np.float64), 0)
    return {"h": (h.T @ h, len(h)), "r": (r.T @ r, len(r))}


def test_hessians_match_numpy_and_split_passes_change_nothing(tmp_path: Path) -> None:
    path = models.save(models.shared_input_matmuls(), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 5 + i, 16)).astype(np.float32)} for i in range(3)]
    matmuls = {"mma": "h", "mmb": "h", "mmc": "r"}
    whole = hessians(path, matmuls, feeds)
    assert whole["mma"] is whole["mmb"]  # one Hessian for a shared input
    expected = _reference_products(feeds)
    for name, tensor in matmuls.items():
        xtx, tokens = expected[tensor]
        assert whole[name].tokens == tokens == 2 * (5 + 6 + 7)
        np.testing.assert_allclose(whole[name].xtx, xtx, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(whole[name].matrix, 2 * xtx / tokens, rtol=1e-5, atol=1e-5)

    split = hessians(path, matmuls, feeds, budget_bytes=24 * 24 * 8)  # one K² sum at a time: two passes
    for name in matmuls:
        np.testing.assert_array_equal(split[name].xtx, whole[name].xtx)
        assert split[name].tokens == whole[name].tokens

    one_pass = hessians(path, matmuls, iter(feeds))  # an iterator is fine when one pass is enough
    np.testing.assert_array_equal(one_pass["mmc"].xtx, whole["mmc"].xtx)
    with pytest.raises(UsageError, match="2 passes"):
        hessians(path, matmuls, iter(feeds), budget_bytes=24 * 24 * 8)
    with pytest.raises(UsageError, match="'mmx' is not a MatMul"):
        hessians(path, {"mmx": "h"}, feeds)
