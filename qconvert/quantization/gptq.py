"""GPTQ for weight-only block-wise quantization (MatMulNBits), on the grid onnxruntime packs.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", 2022) rounds the rows of
W [K, N] one at a time and moves each row's rounding error onto the rows not yet rounded, weighted
by the inverse Hessian H = 2 XᵀX of the layer's calibration inputs X [tokens, K], so that XŴ stays
close to XW rather than Ŵ close to W. Here:

- `hessians` streams calibration data through a CPU session that exposes the MatMuls' inputs and
  sums XᵀX per input in float64, in as many passes as a memory budget needs;
- `gptq_quantize` returns Ŵ as float32 values that lie exactly on onnxruntime's own RTN grid, so
  packing Ŵ with onnxruntime's MatMulNBitsQuantizer (same bits, block size, symmetry) recovers
  GPTQ's integers and scales: no packer of our own, and the model is as large as an RTN one;
- rows are solved in act-order by default: the most active inputs (largest Hessian diagonal) first,
  while the most weights are still free to absorb their error, each row on its block's grid fixed
  from the weights beforehand (GPTQ's "static groups": MatMulNBits' blocks are contiguous rows, so a
  block's grid cannot wait for its rows' turns). On SmolLM2-135M, int4 blocks of 32: perplexity
  1.059x FP32 against 1.138x in order, and 1.117x in order on the same fixed grids (so the order is
  what wins); on outlier-heavy random inputs the output error halves.

onnxruntime's grid for a block of `block_size` rows of one column (C++ `quantize_matmul_{4,8}bits`,
measured; every step in float32, qmax = 2^bits - 1, mid = 2^(bits-1), roundf = half away from 0):

- asymmetric: lo = min(min(v), 0), hi = max(max(v), 0), scale = (hi - lo) / qmax,
  zero point = roundf(0 - lo / scale) clamped to [0, qmax] (0 when scale is 0);
- symmetric: m = max(v) if |max(v)| > |min(v)| else min(v), scale = m / -mid (negative when m > 0),
  zero point = mid (implied, not stored);
- codes = clamp(roundf(v * (1 / scale) + zero point), 0, qmax), 1 / scale taken as 0 when scale is 0;
  the value of a code is (code - zero point) * scale.

To re-pack exactly, a block's dequantized values must make onnxruntime choose the same grid
again: GPTQ forces the code 0 (and qmax) on the entry that set the block's minimum (maximum) at the
block start, where the grid needs it, and the error this costs is propagated like any other.
Symmetric grids are then reproduced exactly (m = -mid * scale is exact). Asymmetric ones are too
after `settled_scale` moves the scale by a few ulps, to one that onnxruntime maps back to itself
from (0 - zp) * scale and (qmax - zp) * scale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from qconvert import progress
from qconvert.errors import DataError, ModelError, QconvertError, UsageError, first_line
from qconvert.quantization.ranges import CANNOT_RUN, CANNOT_RUN_HINT, exposing_session

if TYPE_CHECKING:
    import onnx
    import onnxruntime

logger = logging.getLogger(__name__)

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two, at least 16
LAZY_ROWS = 128  # GPTQ's lazy batch: rows whose updates to later rows are applied by one GEMM
INNER_ROWS = 16  # the same within a lazy batch; divides every block size, so block starts see current weights
NEAR_ULPS = 4  # settled_scale tries this many ulps each side for every column first,
FAR_ULPS = 2048  # then this many for the few columns still unsettled
TOKENS_PER_PRODUCT = 8192  # rows of X per float32 product XᵀX
FLUSH_FEEDS = 8  # feeds summed in float32 before they join the float64 sum (few adds of K² float64 each)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero) for x >= 0, and <= 0 below (callers clamp to >= 0); exact,
    unlike floor(x + 0.5), which float32 rounds up for 0.49999997."""
    floor = np.floor(x)
    result: np.ndarray = floor + (x - floor >= 0.5)
    return result


def _roundf_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`_roundf(x)` written into `out` (x's shape) without temporaries; `x` is overwritten."""
    np.floor(x, out=out)
    x -= out
    out += x >= 0.5
    return out


def rtn_grid(block: np.ndarray, *, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's RTN grid for `block` [rows, N] (one quantization block of every column):
    float32 scales [N] and uint8 zero points [N] (for symmetric grids the implied 2^(bits-1))."""
    values = np.asarray(block, dtype=np.float32)
    return _grid(values.min(axis=0), values.max(axis=0), bits=bits, symmetric=symmetric)


def _grid(low: np.ndarray, high: np.ndarray, *, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """`rtn_grid` from the block's min and max per column."""
    if symmetric:
        mid = 1 << (bits - 1)
        extreme = np.where(np.abs(high) > np.abs(low), high, low)
        return (extreme / np.float32(-mid)).astype(np.float32), np.full(extreme.shape, mid, np.uint8)
    return _asymmetric(low, high, (1 << bits) - 1)


def _asymmetric(low: np.ndarray, high: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point from a block's min and max per column, as onnxruntime picks them."""
    low, high = np.minimum(low, np.float32(0)), np.maximum(high, np.float32(0))
    scale = ((high - low) / np.float32(qmax)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = np.where(scale != 0, np.float32(0) - low / scale, low).astype(np.float32)
    zero = np.clip(_roundf(point), 0, qmax)
    return scale, zero.astype(np.uint8)


def rtn_codes(block: np.ndarray, scale: np.ndarray, zero: np.ndarray, *, bits: int) -> np.ndarray:
    """onnxruntime's integer codes (uint8) for `block` [rows, N] on the grid (`scale`, `zero`) [N]."""
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    point = np.asarray(block, np.float32) * reciprocal + zero.astype(np.float32)
    codes: np.ndarray = np.clip(_roundf(point), 0, (1 << bits) - 1).astype(np.uint8)
    return codes


def dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """(code - zero point) * scale in float32: what MatMulNBits multiplies by."""
    result: np.ndarray = (codes.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
    return result


def rtn_quantize(weight: np.ndarray, *, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """W [K, N] as onnxruntime's RTN packing dequantizes it (float32): the baseline GPTQ beats."""
    _check_format(bits, block_size)
    weight = np.asarray(weight, np.float32)
    out = np.empty_like(weight)
    for start in range(0, weight.shape[0], block_size):
        block = weight[start:start + block_size]
        scale, zero = rtn_grid(block, bits=bits, symmetric=symmetric)
        out[start:start + block_size] = dequantize(rtn_codes(block, scale, zero, bits=bits), scale, zero)
    return out


def _reproduced(scale: np.ndarray, zero: np.ndarray, qmax: int) -> np.ndarray:
    """Where onnxruntime, shown a block whose extremes are codes 0 and qmax of (`scale`, `zero`),
    chooses that grid again."""
    zeros = zero.astype(np.float32)
    low = (np.float32(0) - zeros) * scale
    high = (np.float32(qmax) - zeros) * scale
    again, point = _asymmetric(low, high, qmax)
    reproduced: np.ndarray = (again == scale) & (point == zero)
    return reproduced


def settled_scale(scale: np.ndarray, zero: np.ndarray, *, bits: int) -> np.ndarray:
    """The float32 scales nearest `scale` (in ulps) that onnxruntime's asymmetric rule maps back to
    themselves from the grid's own extremes; `scale` where none is within FAR_ULPS (never seen).

    (qmax - zp) * s - (0 - zp) * s, rounded twice, divided by qmax and rounded again, is s or a
    neighbour; about 6 % of random blocks need a move, by 1-3 ulps mostly, by more for 8 bits when
    the rounding errors share a sign over a run of neighbours."""
    qmax = (1 << bits) - 1
    scale = np.asarray(scale, np.float32).copy()
    todo = np.flatnonzero(~_reproduced(scale, zero, qmax))
    for reach in (NEAR_ULPS, FAR_ULPS):
        if not todo.size:
            break
        steps = np.array(sorted(range(-reach, reach + 1), key=abs)[1:], np.int32)
        bits_of = scale[todo].view(np.int32)[None, :] + steps[:, None]
        candidates = bits_of.view(np.float32)
        good = _reproduced(candidates, np.broadcast_to(zero[todo], candidates.shape), qmax)
        found = good.any(axis=0)
        scale[todo[found]] = candidates[good.argmax(axis=0)[found], np.flatnonzero(found)]
        todo = todo[~found]
    if todo.size:
        logger.debug("%d block column(s) keep a scale onnxruntime will not reproduce exactly", todo.size)
    return scale


CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(13))  # 1.0 down to 0.7


def clipped_extreme(block: np.ndarray, extreme: np.ndarray, *, bits: int) -> np.ndarray:
    """Per column of `block` [rows, N], its symmetric grid's extreme (the value code 0 stands for)
    shrunk by the ratio in CLIP_RATIOS that rounds the column with the least squared error: a smaller
    scale costs the few largest weights and serves every other one. The entry holding the extreme is
    then forced onto it, so onnxruntime re-derives the same grid. (On the sample decoder, 4 bits: 1.0128x
    perplexity without, 1.0090x with; weighting the rows by the Hessian's diagonal was worse.)"""
    mid = np.float32(1 << (bits - 1))
    qmax = np.float32((1 << bits) - 1)
    best, best_error = extreme.astype(np.float32), np.full(extreme.shape, np.inf)
    live = extreme != 0
    values, floor = np.empty_like(block, np.float32), np.empty_like(block, np.float32)
    for ratio in CLIP_RATIOS:  # in place: this loop is a third of GPTQ's solving time
        candidate = (extreme * np.float32(ratio)).astype(np.float32)
        scale = candidate / -mid
        reciprocal = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=live)
        np.multiply(block, reciprocal, out=values)
        values += mid
        _roundf_into(values, floor)
        np.clip(floor, 0, qmax, out=floor)
        floor -= mid
        floor *= scale
        np.subtract(block, floor, out=floor)
        np.square(floor, out=floor)
        error = floor.sum(axis=0)
        better = error < best_error
        best, best_error = np.where(better, candidate, best), np.where(better, error, best_error)
    return best


@dataclass(frozen=True)
class _BlockGrid:
    """The grid of one quantization block, chosen at its first row, and the entries that must take
    the extreme codes so that onnxruntime re-derives that grid from the output."""

    scale: np.ndarray  # float32 [N]
    zero: np.ndarray  # float32 [N]
    reciprocal: np.ndarray  # float32 [N]
    lowest_row: np.ndarray  # [N] the row forced to code 0, or -1
    highest_row: np.ndarray  # [N] the row forced to code qmax, or -1
    qmax: int

    @classmethod
    def start(cls, block: np.ndarray, first_row: int, *, bits: int, symmetric: bool) -> _BlockGrid:
        qmax = (1 << bits) - 1
        low, high = block.min(axis=0), block.max(axis=0)
        scale, zero = _grid(low, high, bits=bits, symmetric=symmetric)
        if symmetric and bits == 4:  # the extreme clipped where that rounds closer (its entry then takes code 0);
            # 8-bit steps are fine enough that clipping only costs (the sample decoder: 1.0001x without, 1.0008x with)
            extreme = clipped_extreme(block, np.where(np.abs(high) > np.abs(low), high, low), bits=bits)
            scale = (extreme / np.float32(-(1 << (bits - 1)))).astype(np.float32)
        live = scale != 0
        lowest, highest = first_row + _row_of(block, low), first_row + _row_of(block, high)
        if symmetric:
            # code 0 is -mid * scale, the extreme value itself: the re-derived scale is this one
            lowest = np.where(live, np.where(np.abs(high) > np.abs(low), highest, lowest), -1)
            highest = np.full(scale.shape, -1)
        else:
            scale = settled_scale(scale, zero, bits=bits)
            lowest, highest = np.where(live & (zero > 0), lowest, -1), np.where(live & (zero < qmax), highest, -1)
        with np.errstate(divide="ignore"):
            reciprocal = np.where(live, np.float32(1) / scale, np.float32(0)).astype(np.float32)
        return cls(scale, zero.astype(np.float32), reciprocal, lowest, highest, qmax)

    def snap(self, row: np.ndarray, index: int) -> np.ndarray:
        """Row `index` rounded onto the grid (onnxruntime's rounding, extremes forced), dequantized."""
        codes = row * self.reciprocal
        codes += self.zero
        floor = _roundf_into(codes, np.empty_like(codes))
        np.clip(floor, 0, self.qmax, out=floor)
        floor[self.lowest_row == index] = 0
        floor[self.highest_row == index] = self.qmax
        floor -= self.zero
        floor *= self.scale
        snapped: np.ndarray = floor
        return snapped


def _row_of(block: np.ndarray, value: np.ndarray) -> np.ndarray:
    """A row where each column of `block` [rows, N] equals `value` [N] (found by value: an argmin
    down the columns of a row-major block is 20x slower)."""
    rows, columns = np.nonzero(block == value)
    found = np.zeros(block.shape[1], np.int64)
    found[columns] = rows
    return found


def _check_format(bits: int, block_size: int) -> None:
    if bits not in BITS:
        raise UsageError(f"MatMulNBits weights have 4 or 8 bits here, not {bits}", hint="choose 4 or 8")
    if block_size not in BLOCK_SIZES:
        raise UsageError(f"block size {block_size} is not one MatMulNBits takes",
                         hint=f"choose one of {', '.join(map(str, BLOCK_SIZES))}")


def _inverse_hessian_factor(hessian: np.ndarray, percdamp: float) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), float64, after GPTQ's fixes: a dead input
    (zero diagonal: never non-zero in the data) gets 1 on the diagonal, which leaves its row plain
    RTN with no error flowing in or out; then percdamp · mean(diag H) is added to the diagonal,
    ten times more at each retry while H is not numerically positive definite.

    With J the reversal, J H J = L Lᵀ gives H = R Rᵀ for the upper R = J L J, so U = R⁻¹ = J L⁻¹ J:
    one Cholesky and one triangular inverse, no explicit H⁻¹."""
    h = np.array(hessian, dtype=np.float64)[::-1, ::-1]
    h = (h + h.T) / 2
    diagonal = np.diag(h).copy()
    diagonal[diagonal == 0] = 1.0
    damp = percdamp * float(diagonal.mean())
    for _ in range(4):
        np.fill_diagonal(h, diagonal + damp)
        try:
            factor: np.ndarray = _inverse_lower(np.linalg.cholesky(h))[::-1, ::-1]
            return factor
        except np.linalg.LinAlgError:
            damp = damp * 10 if damp > 0 else 1e-6 * float(diagonal.mean())
    raise DataError("the Hessian of a MatMul's inputs is not positive definite even with dampening",
                    hint="give more calibration tokens, or a larger percdamp")


def _inverse_lower(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves, [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹CA⁻¹, D⁻¹]]:
    GEMMs for a third of LU's work (numpy has no triangular inverse)."""
    size = lower.shape[0]
    if size <= 128:
        small: np.ndarray = np.tril(np.linalg.inv(lower))
        return small
    half = size // 2
    first, second = _inverse_lower(lower[:half, :half]), _inverse_lower(lower[half:, half:])
    inverse = np.zeros_like(lower)
    inverse[:half, :half] = first
    inverse[half:, half:] = second
    inverse[half:, :half] = -(second @ lower[half:, :half]) @ first
    return inverse


class Solved(NamedTuple):
    """GPTQ's Ŵ (float32, W's shape) and the output error it leaves, tr((W - Ŵ)ᵀ H (W - Ŵ)) for H with
    GPTQ's dampening: the sum of its per-row losses, exact for that H, at no extra cost."""

    weight: np.ndarray
    error: float


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, *, bits: int, block_size: int, symmetric: bool,
                  percdamp: float = 0.01, act_order: bool = True) -> Solved:
    """GPTQ's Ŵ for W [K, N] (float32) given H [K, K] (any positive multiple of XᵀX), every block of
    `block_size` rows of every column on the grid onnxruntime's RTN packing picks for it, and the
    output error it leaves (in H's units).

    `act_order`: rows are quantized from the largest Hessian diagonal down, each on its block's grid
    chosen from W beforehand; else in order, each block's grid chosen from the error-updated weights
    at its first row. Updates are lazy, in float32: a row takes those of the earlier rows of its 16
    by one GEMV, the rest of its 128-row batch those of each 16 by one GEMM, the remaining rows those
    of each batch by one GEMM."""
    _check_format(bits, block_size)
    w = np.array(weight, dtype=np.float32)
    if w.ndim != 2:
        raise UsageError(f"the weight must be a matrix [K, N], not of shape {w.shape}", hint="pass MatMul's B")
    rows, columns = w.shape
    if np.shape(hessian) != (rows, rows):
        raise UsageError(f"the Hessian has shape {np.shape(hessian)}, the weight {rows} rows",
                         hint="pass the Hessian of this MatMul's input, [K, K]")
    if not (np.isfinite(w).all() and np.isfinite(hessian).all()):
        raise DataError("the weight or its Hessian has NaN or infinite values", hint="check the model and the data")
    if percdamp < 0:
        raise UsageError(f"percdamp must not be negative, got {percdamp}", hint="GPTQ's default is 0.01")
    if not w.size:
        return Solved(w, 0.0)
    order: np.ndarray | None = None
    grids: list[_BlockGrid] = []
    if act_order:
        grids = [_BlockGrid.start(w[s:s + block_size], s, bits=bits, symmetric=symmetric)
                 for s in range(0, rows, block_size)]
        order = np.argsort(-np.diag(hessian), kind="stable")
        w, hessian = w[order], np.asarray(hessian)[np.ix_(order, order)]
    factor = _inverse_hessian_factor(hessian, percdamp).astype(np.float32)
    out = np.empty_like(w)
    errors = np.empty((min(LAZY_ROWS, rows), columns), np.float32)
    grid: _BlockGrid | None = None
    error = 0.0
    for batch in range(0, rows, LAZY_ROWS):
        batch_end = min(batch + LAZY_ROWS, rows)
        for inner in range(batch, batch_end, INNER_ROWS):
            inner_end = min(inner + INNER_ROWS, batch_end)
            for i in range(inner, inner_end):
                index = i if order is None else int(order[i])
                if order is not None:
                    grid = grids[index // block_size]
                elif i % block_size == 0 or grid is None:  # at an inner start: rows i.. are current
                    grid = _BlockGrid.start(w[i:i + block_size], i, bits=bits, symmetric=symmetric)
                # row i as updated by the rows before it in this inner batch (one GEMV)
                row = w[i] - factor[inner:i, i] @ errors[inner - batch:i - batch] if i > inner else w[i]
                out[i] = grid.snap(row, index)
                np.subtract(row, out[i], out=errors[i - batch])
                errors[i - batch] /= factor[i, i]
                error += float(errors[i - batch] @ errors[i - batch])
            if inner_end < batch_end:
                w[inner_end:batch_end] -= factor[inner:inner_end, inner_end:batch_end].T @ errors[
                    inner - batch:inner_end - batch]
        if batch_end < rows:
            w[batch_end:] -= factor[batch:batch_end, batch_end:].T @ errors[:batch_end - batch]
    if order is not None:
        unpermuted = np.empty_like(out)
        unpermuted[order] = out
        return Solved(unpermuted, error)
    return Solved(out, error)


@dataclass(frozen=True)
class Hessian:
    """Σ xᵀx over the calibration tokens x [K] of one activation (float64 [K, K]), their count, and
    the largest |x| among them."""

    xtx: np.ndarray
    tokens: int
    peak: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """GPTQ's H = 2 XᵀX / tokens (GPTQ's result does not depend on H's scale)."""
        result: np.ndarray = self.xtx * (2.0 / max(self.tokens, 1))
        return result


def _widths(model: onnx.ModelProto, matmuls: dict[str, str]) -> dict[str, int]:
    """K of each activation tensor named in `matmuls`, from its MatMul's weight (else its shape)."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    widths: dict[str, int] = {}
    for name, tensor in matmuls.items():
        node = nodes.get(name)
        if node is None or node.op_type != "MatMul" or not node.input or node.input[0] != tensor:
            raise UsageError(f"{name!r} is not a MatMul of the main graph reading {tensor!r} as its first input",
                             hint="map each MatMul node's name to its node.input[0]")
        weight = inits.get(node.input[1])
        width: int | None = int(weight.dims[-2]) if weight is not None and len(weight.dims) >= 2 else None
        info = infos.get(tensor)
        if width is None and info is not None and info.type.tensor_type.shape.dim:
            last = info.type.tensor_type.shape.dim[-1]
            width = last.dim_value if last.HasField("dim_value") and last.dim_value > 0 else None
        if width is None:
            raise ModelError(f"the width of {tensor!r} (MatMul {name!r}) is unknown",
                             hint="give the MatMul a constant weight, or run shape inference on the model")
        if widths.setdefault(tensor, width) != width:
            raise ModelError(f"MatMuls reading {tensor!r} disagree on its width", hint="check the model")
    return widths


def _groups(widths: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Tensors packed into as few groups as fit `budget_bytes` of float64 K² sums (first fit,
    largest first); one larger than the budget alone gets a group of its own."""
    groups: list[list[str]] = []
    room: list[int] = []
    for tensor in sorted(widths, key=lambda t: -widths[t]):
        size = widths[tensor] ** 2 * 8
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            groups.append([tensor])
            room.append(budget_bytes - size)
        else:
            groups[slot].append(tensor)
            room[slot] -= size
    return groups


def hessians(model_path: Path, matmuls: dict[str, str], feeds: Iterable[dict[str, np.ndarray]], *,
             budget_bytes: int = 1 << 30) -> dict[str, Hessian]:
    """Σ XᵀX and the token count of each MatMul's input, keyed by MatMul name (MatMuls that share
    an input share one `Hessian`), X flattened to [-1, K].

    `matmuls` maps MatMul node names to their activation inputs. The inputs are captured through a
    CPU session that exposes them as outputs, one feed at a time; it reads the weights from the
    model's own file and sidecars (nothing is copied or saved). When all sums (K² float64 each)
    exceed `budget_bytes`, the tensors are split into groups that fit and `feeds` is run once per
    group: it must then be re-iterable (a list, a CalibrationData), not a one-shot iterator."""
    import onnx

    if not matmuls:
        return {}
    model = onnx.load(str(model_path), load_external_data=False)
    widths = _widths(model, matmuls)
    groups = _groups(widths, budget_bytes)
    if len(groups) > 1 and iter(feeds) is feeds:
        raise UsageError(f"the Hessians need {len(groups)} passes over the calibration data within "
                         f"{budget_bytes} bytes, and the data given can be read only once",
                         hint="pass a list or a CalibrationData, or a larger budget_bytes")
    logger.info("GPTQ Hessians of %d tensor(s) in %d pass(es) over the data", len(widths), len(groups))
    found: dict[str, Hessian] = {}
    session = exposing_session(model, list(widths), None, external=True, failure=CANNOT_RUN, hint=CANNOT_RUN_HINT,
                               weights=model_path.parent)
    del model
    for number, group in enumerate(groups, 1):
        found.update(_accumulate(session, group, widths, feeds, f"GPTQ Hessians ({number}/{len(groups)})"))
    return {name: found[tensor] for name, tensor in matmuls.items()}


def _flush(sums: dict[str, np.ndarray], partial: dict[str, np.ndarray]) -> None:
    for tensor, part in partial.items():
        sums[tensor] += part
        part.fill(0)


def _accumulate(session: onnxruntime.InferenceSession, tensors: list[str], widths: dict[str, int],
                feeds: Iterable[dict[str, np.ndarray]], description: str) -> dict[str, Hessian]:
    """One pass over `feeds`, summing XᵀX of `tensors`: each feed's product in float32 (one SGEMM, the
    fast kernel), the sum over feeds in float64; one feed's outputs held at a time."""
    sums = {t: np.zeros((widths[t], widths[t]), np.float64) for t in tensors}
    partial = {t: np.zeros((widths[t], widths[t]), np.float32) for t in tensors}  # since the last flush
    tokens = dict.fromkeys(tensors, 0)
    peaks = dict.fromkeys(tensors, 0.0)
    index = -1
    with progress.task(description) as step:
        for index, feed in enumerate(feeds):
            try:
                values = session.run(tensors, feed)
            except QconvertError:
                raise
            except Exception as exc:
                raise DataError(f"calibration failed on sample {index}: {first_line(exc)}",
                                hint="check the calibration data against `qconvert inspect` of the model") from exc
            for tensor, value in zip(tensors, values, strict=True):
                if value.shape[-1:] != (widths[tensor],):
                    raise DataError(f"{tensor!r} has shape {value.shape} on sample {index}, "
                                    f"not [..., {widths[tensor]}]", hint="check the model's shapes")
                flat = value.reshape(-1, widths[tensor])
                for start in range(0, flat.shape[0], TOKENS_PER_PRODUCT):
                    chunk = np.ascontiguousarray(flat[start:start + TOKENS_PER_PRODUCT], np.float32)
                    partial[tensor] += chunk.T @ chunk
                tokens[tensor] += flat.shape[0]
                if flat.size:
                    peaks[tensor] = max(peaks[tensor], float(np.abs(flat).max()))
            del values
            if index % FLUSH_FEEDS == FLUSH_FEEDS - 1:
                _flush(sums, partial)
            step()
    _flush(sums, partial)
    if index < 0:
        raise DataError("no calibration samples for the GPTQ Hessians", hint="give non-empty data")
    return {t: Hessian(sums[t], tokens[t], peaks[t]) for t in tensors}

