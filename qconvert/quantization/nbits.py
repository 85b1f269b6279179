"""The one module that speaks to onnxruntime's weight-only quantizer, `matmul_nbits_quantizer`.

Its sharp edges, hidden here: importing it calls `logging.basicConfig(level=INFO)` (a handler on
the root logger of whoever imports it) and needs `onnx_ir`, which onnxruntime does not declare; its
quantizer logs a line per node; its Gather path writes 4 bits only, in a layout the lm_head's
`MatMulNBits` cannot share. So MatMuls go through `MatMulNBitsQuantizer` (its C++ packing), and
embedding tables through the same C++ packing of their transpose, which is exactly the uint8 layout
`GatherBlockQuantized` reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, cast

import numpy as np

from qconvert.errors import MissingDependencyError, ModelError, first_line

if TYPE_CHECKING:
    import onnx


@cache
def _module() -> ModuleType:
    """onnxruntime's quantizer module, imported without the root-logger handler it installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    except ImportError as exc:
        raise MissingDependencyError(
            f"onnxruntime's weight-only quantizer cannot be imported: {first_line(exc)}",
            hint="pip install onnx-ir (onnxruntime's matmul_nbits_quantizer needs it but does not declare it)",
        ) from exc
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    # It warns that the QDQ form raises the opset to 21 "but the generated model may not be a valid
    # model": qconvert says so itself, and checks that onnxruntime loads what was written.
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.ERROR)
    return cast(ModuleType, matmul_nbits_quantizer)


@dataclass(frozen=True)
class Blocks:
    """One matrix W[K, N] in MatMulNBits' layout: `packed` uint8 [N, K/block, block·bits/8], `scales`
    float [N, K/block], `zero_points` uint8 [N, ⌈(K/block)·bits/8⌉] (None when symmetric)."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None


def pack(weight: np.ndarray, *, bits: int, block_size: int, symmetric: bool) -> Blocks:
    """Quantize W[K, N] block-wise along K with onnxruntime's C++ round-to-nearest packing."""
    module = _module()
    config = module.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits)
    packed, scales, zero_points = module.DefaultWeightOnlyQuantizer(config).qbits_block_quant(
        np.ascontiguousarray(weight))
    return Blocks(packed, scales, None if symmetric else zero_points)


def quantize_matmuls(model: onnx.ModelProto, *, bits: int, block_size: int, symmetric: bool, accuracy_level: int,
                     qdq: bool, exclude: set[str]) -> onnx.ModelProto:
    """Every MatMul with a constant weight not named in `exclude` → MatMulNBits (or, `qdq`, blocked int4
    DequantizeLinear → MatMul at opset 21), in and below the main graph. Returns the model it changed."""
    module = _module()
    from onnxruntime.quantization.quant_utils import QuantFormat

    quantizer = module.MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level or None,
        nodes_to_exclude=sorted(exclude), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",))
    try:
        quantizer.process()
    except Exception as exc:  # any failure inside onnxruntime's quantizer is reported as one
        raise ModelError(f"onnxruntime's weight-only quantizer failed: {first_line(exc)}",
                         hint="keep the failing node in float with --exclude-nodes") from exc
    result: onnx.ModelProto = quantizer.model.model
    return result
