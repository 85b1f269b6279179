"""Weight-only quantization: block-wise 4- and 8-bit weights, activations left float (language models).

Every token a decoder generates reads every weight once, so bytes per weight set its speed. MatMuls
with a constant weight become onnxruntime's `MatMulNBits` (or, in the QDQ form, blocked int4
DequantizeLinear → MatMul); embedding tables read by Gather become `GatherBlockQuantized`. An
embedding tied to the lm_head (the table and the lm_head weight are one matrix, as SmolLM2, Llama
3.2 and Gemma export them) is stored once: the Gather reads the lm_head's packed blocks.

Nodes named in `WeightOnlyConfig.eight_bit` get 8 bits in a 4-bit model: the accuracy search keeps
the most sensitive weights there. With `bits_per_weight`, GPTQ's mix raises more: those whose 4 bits
leave the largest output error per byte 8 bits add (`mixed_eight_bit`).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert import progress
from qconvert.calibration.text import check_tokens, read_tokens
from qconvert.config import (
    ACTIVATION_LIMIT,
    FAST_ACCURACY_LEVEL,
    Mode,
    QuantizeConfig,
    ScaleType,
    TextData,
    WeightForm,
    WeightMethod,
    WeightOnlyConfig,
)
from qconvert.errors import NothingQuantizedError, UsageError
from qconvert.model.decoder import DecoderFeeds, require_decoder
from qconvert.model.files import check_output_path, move_into_place, save_model, staging_dir
from qconvert.model.folders import copy_model_folder
from qconvert.model.graph import (
    PROTOBUF_LIMIT,
    iter_nodes,
    iter_scopes,
    model_nbytes,
    name_unnamed,
    subgraphs,
    tensor_nbytes,
)
from qconvert.model.loading import LoadedModel, load_model
from qconvert.providers import check_loads, quiet_onnxruntime
from qconvert.quantization import gptq, nbits
from qconvert.quantization.planning import refuse_quantized
from qconvert.results import OpTypeCount, QuantizedWeight, QuantizeResult, SkippedNode

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

EMBEDDING, LM_HEAD, BLOCK = "embedding", "lm_head", "block"
_FLOAT_TYPES = (1, 10, 16)  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
_SHAPE_OPS = frozenset({"Reshape", "Cast", "Identity", "Add", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})


@dataclass(frozen=True)
class WeightNode:
    """A node whose constant weight can be quantized: a MatMul reading W[K, N] (`rows` K, `cols` N) or a
    Gather reading an embedding table [V, H] (`rows` V, `cols` H)."""

    name: str
    op_type: str
    weight: str
    rows: int
    cols: int
    graph: str
    role: str  # embedding, lm_head or block

    @property
    def params(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class WeightPlan:
    """What weight-only quantization will do: the candidate nodes, those kept float (name → reason),
    the bits of each of the others, and embeddings tied to an lm_head (Gather → MatMul)."""

    nodes: tuple[WeightNode, ...]
    excluded: dict[str, str]
    bits: dict[str, int]
    tied: dict[str, str]

    def quantized(self, op_type: str) -> list[WeightNode]:
        return [n for n in self.nodes if n.op_type == op_type and n.name not in self.excluded]


def _initializer_dims(tensor: onnx.TensorProto) -> tuple[int, int] | None:
    """[rows, cols] of a float weight that is a matrix (leading unit dims allowed), else None."""
    dims = [int(d) for d in tensor.dims]
    if tensor.data_type not in _FLOAT_TYPES or len(dims) < 2 or any(d != 1 for d in dims[:-2]):
        return None
    return dims[-2], dims[-1]


def _logits_producers(graph: onnx.GraphProto) -> set[str]:
    """Names of nodes whose output reaches a graph output called *logits* through shape-only ops."""
    producer = {out: node for node in graph.node for out in node.output}
    found: set[str] = set()
    for output in graph.output:
        if "logits" not in output.name.lower():
            continue
        name: str | None = output.name
        for _ in range(6):
            node = producer.get(name or "")
            if node is None:
                break
            if node.op_type in ("MatMul", "MatMulNBits"):
                found.add(node.name)
                break
            if node.op_type not in _SHAPE_OPS:
                break
            name = node.input[0] if node.input else None
    return found


def materialize_transposed_weights(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul(x, Transpose(W)) or Gather(Transpose(W), ids) with W an initializer → the node reads Wᵀ,
    stored: how exporters write a tied lm_head or embedding (onnxruntime-genai's builder reads the
    embedding as Transpose(lm_head weight)). The quantizer needs the weight as a constant; a tied pair
    is then stored once again. Returns the name of each stored transpose with its source's."""
    from onnx import numpy_helper

    made_from: dict[str, str] = {}
    for graph, outer in iter_scopes(model.graph):
        scope = {**outer, **{t.name: t for t in graph.initializer}}
        transposed = {}
        for node in graph.node:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            if node.op_type == "Transpose" and node.input[0] in scope and perm == [1, 0] \
                    and len(scope[node.input[0]].dims) == 2:
                transposed[node.output[0]] = scope[node.input[0]]
        made: dict[str, str] = {}
        for node in graph.node:
            slot = {"MatMul": 1, "Gather": 0}.get(node.op_type)
            if slot is None or len(node.input) <= slot or node.input[slot] not in transposed:
                continue
            source = transposed[node.input[slot]]
            if source.name not in made:
                name = f"{source.name}.transposed"
                graph.initializer.append(numpy_helper.from_array(
                    np.ascontiguousarray(numpy_helper.to_array(source).T), name))
                made[source.name], made_from[name] = name, source.name
            node.input[slot] = made[source.name]
        read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        read |= {i for node in graph.node for _, body in subgraphs(node) for n in body.node for i in n.input}
        for node in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in transposed]:
            if node.output[0] not in read:
                graph.node.remove(node)
    return made_from


def weight_nodes(model: onnx.ModelProto) -> list[WeightNode]:
    """Every MatMul with a constant float matrix weight and every Gather on a constant float table, each
    with its role: the embedding (a Gather), the lm_head (the MatMul that writes the logits, or maps
    the hidden size to the vocabulary), or a block's. Reads the graph only, not the weights' data."""
    nodes: list[WeightNode] = []
    for graph, outer in iter_scopes(model.graph):
        scope = {**outer, **{t.name: t for t in graph.initializer}}
        heads = _logits_producers(graph)
        where = "" if graph is model.graph else graph.name
        for node in graph.node:
            if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in scope:
                dims = _initializer_dims(scope[node.input[1]])
                if dims is not None:
                    nodes.append(WeightNode(node.name, "MatMul", node.input[1], *dims, where,
                                            LM_HEAD if node.name in heads else BLOCK))
            elif node.op_type == "Gather" and node.input and node.input[0] in scope:
                tensor = scope[node.input[0]]
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if len(tensor.dims) == 2 and tensor.data_type in _FLOAT_TYPES and axis == 0:
                    nodes.append(WeightNode(node.name, "Gather", tensor.name, int(tensor.dims[0]),
                                            int(tensor.dims[1]), where, EMBEDDING))
    vocab = {n.rows for n in nodes if n.role == EMBEDDING}
    return [replace(n, role=LM_HEAD) if n.op_type == "MatMul" and n.role == BLOCK and n.cols in vocab
            and n.cols > n.rows else n for n in nodes]


EIGHT_BIT_BLOCKS = (128, 64)  # 8-bit blocks when free to choose: with blocks of 32, scales add 12 % to 8 bits


def default_blocks(model: onnx.ModelProto, bits: int) -> int:
    """The block size when none is given: 32 for 4 bits (accuracy); for 8 bits the largest of
    EIGHT_BIT_BLOCKS, else 32, that divides every embedding's width, so the table is quantized and a tied
    lm_head shares it."""
    if bits == 4:
        return 32
    widths = {n.cols for n in weight_nodes(model) if n.role == EMBEDDING}
    return next((b for b in EIGHT_BIT_BLOCKS if all(w % b == 0 for w in widths)), 32)


def block_size_of(node: WeightNode, bits: int, config: WeightOnlyConfig) -> int:
    """The block size `node` is quantized with at `bits`: the configuration's, except for the 8-bit weights
    of a 4-bit model (the search's), which take the largest of EIGHT_BIT_BLOCKS, at least that large, dividing
    the length they are blocked along (a MatMul's K, a table's width; a tied pair has one), else the
    configuration's. A table's block then fits GatherBlockQuantized (`table_blocks`)."""
    size = config.blocks
    if bits == 8 and config.bits == 4:
        length = node.cols if node.op_type == "Gather" else node.rows
        size = next((b for b in EIGHT_BIT_BLOCKS if b >= size and length % b == 0), size)
    if node.op_type == "Gather":
        return table_blocks(node.cols, size) or size
    return size


def half_scaled(bits: int, config: WeightOnlyConfig) -> bool:
    """Whether `bits`-wide weights get float16 scales: under --scales fp16, except the 8-bit weights of a
    4-bit model, where they would save 0.125 bit per weight (blocks of 128) and cost two casts per
    MatMul, a few percent of decode speed."""
    return config.scales is ScaleType.FP16 and not (bits == 8 and config.bits == 4)


def stored_bytes(node: WeightNode, bits: int, config: WeightOnlyConfig) -> int:
    """The bytes of `node`'s weight at `bits`: the codes, a float32 (or float16) scale per block and,
    asymmetric, a `bits`-wide zero point per block (rounded up to whole bytes per row of blocks)."""
    size = block_size_of(node, bits, config)
    length, others = (node.cols, node.rows) if node.op_type == "Gather" else (node.rows, node.cols)
    blocks = -(-length // size)
    zero_points = 0 if config.symmetric else others * -(-blocks * bits // 8)
    scale = 2 if half_scaled(bits, config) else 4
    return others * blocks * (size * bits // 8 + scale) + zero_points


def mixed_eight_bit(the_plan: WeightPlan, errors: dict[str, float], config: WeightOnlyConfig,
                    float32_scales: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The 4-bit weights a mix raises to 8 bits: by `errors` (GPTQ's output error at 4 bits, by node)
    per byte 8 bits add, most first, each that still fits while the quantized weights average at most
    `config.bits_per_weight` bits, scales and zero points included (float32 scales for the nodes in
    `float32_scales` whatever `config.scales`). A tied embedding reads its lm_head's blocks: the pair
    is stored, counted and raised once (by the head). Weights without an error (RTN's, lone tables)
    stay as they are."""
    assert config.bits_per_weight is not None
    wide = replace(config, scales=ScaleType.FP32)

    def cost(node: WeightNode, bits: int) -> int:
        return stored_bytes(node, bits, wide if node.name in float32_scales else config)

    bits = the_plan.bits
    stored = [n for n in the_plan.nodes if n.name in bits and the_plan.tied.get(n.name) not in bits]
    spent = sum(cost(n, bits[n.name]) for n in stored)
    budget = config.bits_per_weight * sum(n.params for n in stored) / 8
    extra = {n.name: cost(n, 8) - cost(n, 4) for n in stored if bits[n.name] == 4 and n.name in errors}
    chosen = []
    for name in sorted(extra, key=lambda name: -errors[name] / max(extra[name], 1)):
        if spent + extra[name] <= budget:
            chosen.append(name)
            spent += extra[name]
    return chosen


def plan_weights(model: onnx.ModelProto, quantize: QuantizeConfig, transposed: dict[str, str] | None = None
                 ) -> WeightPlan:
    """Which MatMul and Gather weights to quantize, with how many bits, and why the others stay float.
    An embedding is tied to an lm_head whose weight is its transpose: known from `transposed` (stored
    transposes by their sources, from `materialize_transposed_weights`), else compared by value."""
    from onnx import numpy_helper

    config = quantize.weight_only
    nodes = weight_nodes(model)
    excluded: dict[str, str] = {}
    tensors = {t.name: t for g, _ in iter_scopes(model.graph) for t in g.initializer}
    for n in nodes:
        reason = _float_reason(n, quantize, config)
        if reason:
            excluded[n.name] = reason
    tied: dict[str, str] = {}
    for gather in (n for n in nodes if n.role == EMBEDDING):
        for head in (n for n in nodes if n.role == LM_HEAD and (n.rows, n.cols) == (gather.cols, gather.rows)):
            if (transposed or {}).get(gather.weight) == head.weight or np.array_equal(
                    numpy_helper.to_array(tensors[head.weight]), numpy_helper.to_array(tensors[gather.weight]).T):
                tied[gather.name] = head.name
                break
    return WeightPlan(tuple(nodes), excluded, widths(nodes, excluded, tied, config.bits, config.eight_bit), tied)


def widths(nodes: tuple[WeightNode, ...] | list[WeightNode], excluded: dict[str, str], tied: dict[str, str],
           bits: int, eight_bit: tuple[str, ...]) -> dict[str, int]:
    """The bits of each weight not kept float: 8 for an int8 model or a name matching `eight_bit`, else 4;
    a tied embedding takes its lm_head's (one matrix, one width: the Gather reads the head's blocks)."""
    found = {n.name: 8 if bits == 8 or any(fnmatch.fnmatchcase(n.name, p) for p in eight_bit) else 4
             for n in nodes if n.name not in excluded}
    for gather, head in tied.items():
        if head in found and gather in found:
            found[gather] = found[head]
    return found


def _float_reason(n: WeightNode, quantize: QuantizeConfig, config: WeightOnlyConfig) -> str | None:
    if any(fnmatch.fnmatchcase(n.name, pattern) for pattern in quantize.exclude_nodes):
        return "excluded by --exclude-nodes"
    if n.op_type in quantize.exclude_op_types or (quantize.op_types and n.op_type not in quantize.op_types):
        return f"{n.op_type} not selected (--op-types / --exclude-op-types)"
    if n.op_type == "Gather":
        if not config.embeddings:
            return "embeddings kept float (--no-embeddings)"
        if config.form is WeightForm.QDQ:
            return "the QDQ form has no blocked Gather: the embedding stays float"
        if table_blocks(n.cols, config.blocks) is None:
            return f"embedding width {n.cols} is not a multiple of 16 (GatherBlockQuantized's smallest block)"
    return None


def table_blocks(width: int, block_size: int) -> int | None:
    """An embedding table's block size: `block_size` when it divides the width (GatherBlockQuantized has
    no padding), else the largest power of two from 16 below it that does; None when none does."""
    return next((b for b in (block_size, 128, 64, 32, 16) if b <= block_size and width % b == 0), None)


class WeightJob:
    """One model read, checked and planned once, then written weight-only as often as a search needs
    (`write`), each time with its own set of 8-bit nodes. GPTQ's weights are solved once per node
    and width, from Hessians of the calibration text computed once."""

    def __init__(self, model: str | Path | LoadedModel, config: QuantizeConfig,
                 calibration: TextData | None = None) -> None:
        self.config, self.calibration = config, calibration
        if config.weight_only.method is WeightMethod.GPTQ and calibration is None:
            raise UsageError("GPTQ needs calibration text", hint="add --calib-text FILE (or --weight-method rtn)")
        self.loaded = loaded = model if isinstance(model, LoadedModel) else load_model(model)
        refuse_quantized(loaded)
        started = time.perf_counter()
        with progress.task("reading weights", total=None):
            self.proto = loaded.owned_copy()
        name_unnamed(self.proto)
        transposed = materialize_transposed_weights(self.proto)
        if config.weight_only.block_size is None:
            self.config = config = replace(config, weight_only=replace(
                config.weight_only, block_size=default_blocks(self.proto, config.weight_only.bits)))
        self.plan = plan_weights(self.proto, config, transposed)
        _check_plan(loaded.path, self.plan, config.weight_only)
        self.external = loaded.uses_external_data or model_nbytes(self.proto) >= PROTOBUF_LIMIT
        self.prepare_seconds = time.perf_counter() - started
        self.calibration_seconds, self.samples = 0.0, 0
        self._hessians: dict[str, gptq.Hessian] | None = None
        self._solved: dict[tuple[str, int], np.ndarray] = {}
        self._errors: dict[str, float] = {}  # GPTQ's output error at 4 bits, by node
        self._tensors = {t.name: t for g, _ in iter_scopes(self.proto.graph) for t in g.initializer}
        self.solvable = self._solvable()

    def text_feeds(self, text: TextData, windows: int) -> list[dict[str, np.ndarray]]:
        """The model's inputs for at most `windows` consecutive windows of GPTQ_CONTEXT tokens of `text`,
        each from an empty cache."""
        signature = require_decoder(self.loaded.proto, self.loaded.path)
        tokens = read_tokens(text, self.loaded.path)
        check_tokens(tokens, signature.vocab, GPTQ_CONTEXT, str(text.text or text.tokens))
        build = DecoderFeeds.of_model(self.loaded.proto, signature, name=str(self.loaded.path))
        return [build(tokens[None, i * GPTQ_CONTEXT:(i + 1) * GPTQ_CONTEXT])
                for i in range(min(windows, tokens.size // GPTQ_CONTEXT))]

    def hessians(self, text: TextData, windows: int) -> dict[str, gptq.Hessian]:
        """XᵀX of every quantized MatMul's input over `windows` windows of `text` (FP32 activations)."""
        feeds = self.text_feeds(text, windows)
        inputs = {gn.node.name: gn.node.input[0] for gn in iter_nodes(self.proto.graph) if gn.node.op_type == "MatMul"}
        with progress.task("activations", total=None), quiet_onnxruntime():
            return gptq.hessians(self.loaded.path, {n.name: inputs[n.name] for n in self.solvable}, feeds)

    def _solvable(self) -> list[WeightNode]:
        """The quantized MatMuls GPTQ can solve: in the main graph, their weight read by them alone (one
        Hessian cannot serve two readers)."""
        readers: dict[str, int] = {}
        for gn in iter_nodes(self.proto.graph):
            if gn.node.op_type == "MatMul" and len(gn.node.input) == 2:
                readers[gn.node.input[1]] = readers.get(gn.node.input[1], 0) + 1
        return [n for n in self.plan.quantized("MatMul") if readers.get(n.weight) == 1 and not n.graph]

    def rounded(self, node: WeightNode, bits: int) -> np.ndarray:
        """`node`'s weight as its quantized model computes with it (float32, the weight's shape): GPTQ's
        (solved once per node and width, kept) or round-to-nearest's."""
        from onnx import numpy_helper

        config = self.config.weight_only
        key = (node.name, bits)
        if key in self._solved:
            return self._solved[key]
        weight = numpy_helper.to_array(self._tensors[node.weight]).astype(np.float32)
        blocks = block_size_of(node, bits, config)
        if node.op_type == "Gather":  # a table is quantized along its rows' width
            return np.ascontiguousarray(gptq.rtn_quantize(weight.T, bits=bits, block_size=blocks,
                                                          symmetric=config.symmetric).T)
        matrix = weight.reshape(node.rows, node.cols)
        if config.method is not WeightMethod.GPTQ or node not in self.solvable:
            return gptq.rtn_quantize(matrix, bits=bits, block_size=blocks,
                                     symmetric=config.symmetric).reshape(weight.shape)
        if self._hessians is None:
            assert self.calibration is not None
            started = time.perf_counter()
            self._hessians = self.hessians(self.calibration, GPTQ_WINDOWS)
            self.samples = next(iter(self._hessians.values())).tokens // GPTQ_CONTEXT if self._hessians else 0
            self.calibration_seconds += time.perf_counter() - started
        started = time.perf_counter()
        solved = gptq.gptq_quantize(matrix, self._hessians[node.name].matrix, bits=bits, block_size=blocks,
                                    symmetric=config.symmetric, act_order=config.act_order)
        self._solved[key] = solved.weight.reshape(weight.shape)
        if bits == 4:
            self._errors[node.name] = solved.error
        self.calibration_seconds += time.perf_counter() - started
        return self._solved[key]

    def _mixed(self, config: QuantizeConfig, the_plan: WeightPlan) -> tuple[QuantizeConfig, WeightPlan]:
        """`config` and `the_plan` with the mix's 8-bit weights added (every solvable weight solved at 4
        bits first, for its error)."""
        with progress.task("GPTQ", total=len(self.solvable)) as step:
            for n in self.solvable:
                self.rounded(n, 4)
                step()
        weight_only = config.weight_only
        raised = mixed_eight_bit(the_plan, self._errors, weight_only, self._beyond())
        weight_only = replace(weight_only, eight_bit=(*weight_only.eight_bit, *map(glob.escape, raised)))
        return replace(config, weight_only=weight_only), replace(the_plan, bits=widths(
            the_plan.nodes, the_plan.excluded, the_plan.tied, weight_only.bits, weight_only.eight_bit))

    def _gptq(self, proto: onnx.ModelProto, bits: dict[str, int]) -> None:
        """Each solvable MatMul's weight in `proto` replaced by GPTQ's for its width."""
        from onnx import helper, numpy_helper

        tensors = {t.name: t for t in proto.graph.initializer}
        with progress.task("GPTQ", total=len(self.solvable)) as step:
            for n in self.solvable:
                tensor = tensors[n.weight]
                solved = self.rounded(n, bits[n.name])
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                tensor.CopyFrom(numpy_helper.from_array(solved.astype(dtype), tensor.name))
                step()

    def _beyond(self) -> set[str]:
        """The MatMuls whose inputs went beyond ACTIVATION_LIMIT on GPTQ's calibration text: they keep
        float32 scales under --scales fp16."""
        return {name for name, found in (self._hessians or {}).items() if found.peak > ACTIVATION_LIMIT}

    def _half_scales(self, proto: onnx.ModelProto, the_plan: WeightPlan, config: WeightOnlyConfig) -> list[str]:
        """Float16 scales in `proto`, except on MatMuls whose inputs went beyond ACTIVATION_LIMIT on
        GPTQ's calibration text and on weights `half_scaled` leaves float32; warnings for the first, and
        for MatMuls no calibration saw."""
        peaks = {name: found.peak for name, found in (self._hessians or {}).items()}
        beyond = self._beyond()
        wide = {name for name, bits in the_plan.bits.items() if not half_scaled(bits, config)}
        half_scales(proto, keep=beyond | wide)
        warnings = []
        if beyond:
            warnings.append(f"--scales fp16: {len(beyond)} MatMul(s) keep float32 scales: their inputs reach "
                            f"{max(peaks[n] for n in beyond):.4g} on the calibration text, beyond the "
                            f"{ACTIVATION_LIMIT:g} that leaves float16 16x headroom")
        unchecked = [n for n in self.plan.quantized("MatMul") if n.name not in peaks and n.name not in wide]
        if unchecked:
            warnings.append(f"--scales fp16: the inputs of {len(unchecked)} MatMul(s) now pass through float16 "
                            "unchecked against its range (no calibration activations for them"
                            + ("; --calib-text gives them)" if not peaks else ")"))
        return warnings

    def write(self, output: str | Path, *, eight_bit: tuple[str, ...] | None = None, force: bool = False,
              last: bool = False) -> QuantizeResult:
        """The model quantized into `output` (written atomically, external data when the model has it
        or needs it), with the nodes matching `eight_bit` (None: the configuration's) in 8 bits,
        beside copies of its onnxruntime-genai folder's config and tokenizer files. `last`: the job's
        final write, which may quantize its own copy of the model in place (a model's size less memory)."""
        import onnx

        out = Path(output)
        check_output_path(out, inputs=(self.loaded.path,), force=force)
        config = self.config if eight_bit is None else replace(
            self.config, weight_only=replace(self.config.weight_only, eight_bit=eight_bit, bits_per_weight=None))
        the_plan = self.plan if eight_bit is None else replace(self.plan, bits=widths(
            self.plan.nodes, self.plan.excluded, self.plan.tied, config.weight_only.bits, eight_bit))
        if config.weight_only.bits_per_weight is not None:
            config, the_plan = self._mixed(config, the_plan)
        proto = self.proto
        if not last:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
        with staging_dir(out) as work:
            if config.weight_only.method is WeightMethod.GPTQ:
                self._gptq(proto, the_plan.bits)
            started = time.perf_counter()
            with progress.task("quantizing weights", total=None), quiet_onnxruntime():
                proto = _quantize(proto, the_plan, config.weight_only)
                notes = self._half_scales(proto, the_plan, config.weight_only) \
                    if config.weight_only.scales is ScaleType.FP16 else []
            seconds = time.perf_counter() - started
            staged = work / out.name
            save_model(proto, staged, external=self.external)
            check_loads(staged, failure="onnxruntime cannot load the weight-only model it produced",
                        hint="keep the failing node in float with --exclude-nodes; no output was written")
            bytes_after = move_into_place(staged, out)
        copied = copy_model_folder(self.loaded.path, out)
        result = _result(self.loaded, out, config, the_plan, proto, bytes_after, self.prepare_seconds, seconds,
                         copied)
        result.calibration_seconds, result.calibration_samples = self.calibration_seconds, self.samples
        result.warnings.extend(notes)
        result.data = self.calibration.to_dict() if self.calibration is not None else None
        return result


def quantize_weights(model: str | Path | LoadedModel, output: str | Path, calibration: TextData | None = None, *,
                     config: QuantizeConfig | None = None, force: bool = False) -> QuantizeResult:
    """Quantize `model`'s MatMul and embedding weights block-wise into `output` (see `WeightJob.write`).
    GPTQ reads `calibration` text."""
    job = WeightJob(model, config or QuantizeConfig(mode=Mode.WEIGHT_ONLY), calibration)
    return job.write(output, force=force, last=True)


GPTQ_CONTEXT = 256  # tokens per calibration window
GPTQ_WINDOWS = 32  # windows at most: 8192 tokens


def _check_plan(path: Path, the_plan: WeightPlan, config: WeightOnlyConfig) -> None:
    if not the_plan.bits:
        raise NothingQuantizedError(
            f"nothing to quantize in {path}: weight-only mode needs MatMul or embedding-Gather nodes with constant "
            f"float weights; {len(the_plan.nodes)} found, {len(the_plan.excluded)} kept float",
            hint="weight-only mode is for language models and other MatMul-heavy models; use --mode static or "
                 "dynamic for CNNs; no output was written",
            details=tuple(sorted(set(the_plan.excluded.values()))))
    unknown = [p for p in config.eight_bit if not any(fnmatch.fnmatchcase(n.name, p) for n in the_plan.nodes)]
    if unknown:
        raise UsageError(f"--eight-bit names no weight node: {', '.join(unknown)}",
                         hint="`qconvert inspect MODEL` lists the model's MatMul and Gather weights")


def _quantize(proto: onnx.ModelProto, the_plan: WeightPlan, config: WeightOnlyConfig) -> onnx.ModelProto:
    """Run onnxruntime's MatMul quantizer once per bit width, then replace the embedding Gathers."""
    matmuls = the_plan.quantized("MatMul")
    qdq = config.form is WeightForm.QDQ
    every = {n.name for n in the_plan.nodes if n.op_type == "MatMul"}
    for width in (8, 4):
        sizes = {n.name: block_size_of(n, width, config) for n in matmuls if the_plan.bits[n.name] == width}
        for size in sorted(set(sizes.values())):
            chosen = {name for name, own in sizes.items() if own == size}
            proto = nbits.quantize_matmuls(proto, bits=width, block_size=size, symmetric=config.symmetric,
                                           accuracy_level=config.accuracy_level, qdq=qdq, exclude=every - chosen)
    by_name = {n.name: n for n in the_plan.nodes}
    for gather in the_plan.quantized("Gather"):
        head = the_plan.tied.get(gather.name)
        bits = the_plan.bits[gather.name]
        shared = head is not None and head not in the_plan.excluded and the_plan.bits[head] == bits and not qdq \
            and block_size_of(gather, bits, config) == block_size_of(by_name[head], bits, config)
        _replace_gather(proto, gather, bits, config, head if shared else None)
    return proto


def half_scales(proto: onnx.ModelProto, keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Every MatMulNBits and GatherBlockQuantized with float16 scales (a tied pair's shared ones made
    once), a MatMulNBits' activation cast to float16 in front of it (once per tensor), each output cast
    back to float32: the rest of the model is unchanged. onnxruntime's CPU kernels take float16 for
    both; a decode step runs as fast (measured: 82 us either way, K 576, N 1536), a 128-token prefill
    about 1.6x slower. Nodes that replaced one named in `keep`, and those sharing their scales, stay
    float32. Returns the nodes changed."""
    from onnx import TensorProto, helper, numpy_helper

    quantized = [gn.node for gn in iter_nodes(proto.graph) if gn.node.domain == "com.microsoft"
                 and gn.node.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    kept = {n.input[2] for n in quantized if n.name.rsplit("_Q", 1)[0] in keep}
    halves: dict[str, str] = {}  # float32 scales (or bias) → the name of their float16 copy
    changed = 0
    for graph, outer in iter_scopes(proto.graph):
        scope = {**outer, **{t.name: t for t in graph.initializer}}
        casts: dict[str, str] = {}
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized") \
                    or node.input[2] in kept:
                nodes.append(node)
                continue
            floats = [2, 5] if node.op_type == "MatMulNBits" else [2]  # scales, and MatMulNBits' bias
            for slot in (i for i in floats if i < len(node.input) and node.input[i]):
                name = node.input[slot]
                if name not in halves:
                    halves[name] = f"{name}_fp16"
                    graph.initializer.append(numpy_helper.from_array(
                        numpy_helper.to_array(scope[name]).astype(np.float16), halves[name]))
                node.input[slot] = halves[name]
            if node.op_type == "MatMulNBits":
                source = node.input[0]
                if source not in casts:
                    casts[source] = f"{source}_as_fp16"
                    nodes.append(helper.make_node("Cast", [source], [casts[source]], name=f"{node.name}_to_fp16",
                                                  to=TensorProto.FLOAT16))
                node.input[0] = casts[source]
            output = node.output[0]
            node.output[0] = f"{output}_in_fp16"
            nodes.extend([node, helper.make_node("Cast", [node.output[0]], [output], name=f"{node.name}_to_fp32",
                                                 to=TensorProto.FLOAT)])
            changed += 1
        del graph.node[:]
        graph.node.extend(nodes)
    read = {i for gn in iter_nodes(proto.graph) for i in gn.node.input}
    for graph, _ in iter_scopes(proto.graph):
        for tensor in [t for t in graph.initializer if t.name in halves and t.name not in read]:
            graph.initializer.remove(tensor)
    return changed


def _find(proto: onnx.ModelProto, name: str) -> tuple[onnx.GraphProto, onnx.NodeProto]:
    for graph, _ in iter_scopes(proto.graph):
        for node in graph.node:
            if node.name == name:
                return graph, node
    raise KeyError(name)


def _replace_gather(proto: onnx.ModelProto, gather: WeightNode, bits: int, config: WeightOnlyConfig,
                    head: str | None) -> None:
    """Gather(table, ids) → GatherBlockQuantized(blocks, ids, scales[, zero points]). The blocks are the
    table's transpose packed as MatMulNBits packs a weight, which is the layout GatherBlockQuantized
    reads once reshaped to [V, H·bits/8]: a tied lm_head's blocks are read in place."""
    from onnx import helper, numpy_helper

    graph, node = _find(proto, gather.name)
    vocab, width = gather.rows, gather.cols
    block_size = block_size_of(gather, bits, config)
    if head is not None:
        _, matmul = _find(proto, f"{head}_Q{bits}")
        packed, scales = matmul.input[1], matmul.input[2]
        zero_points = matmul.input[3] if len(matmul.input) > 3 and matmul.input[3] else None
    else:
        scope = {t.name: t for g, _ in iter_scopes(proto.graph) for t in g.initializer}
        table = numpy_helper.to_array(scope[gather.weight])
        blocks = nbits.pack(np.ascontiguousarray(table.T), bits=bits, block_size=block_size,
                            symmetric=config.symmetric)
        packed, scales = f"{gather.weight}_Q{bits}", f"{gather.weight}_scales"
        graph.initializer.extend([numpy_helper.from_array(blocks.packed, packed),
                                  numpy_helper.from_array(blocks.scales, scales)])
        zero_points = None
        if blocks.zero_points is not None:
            zero_points = f"{gather.weight}_zero_points"
            graph.initializer.append(numpy_helper.from_array(blocks.zero_points, zero_points))
    shape = f"{gather.name}_Q{bits}_shape"
    data = f"{gather.name}_Q{bits}_data"
    graph.initializer.append(numpy_helper.from_array(np.array([vocab, width * bits // 8], np.int64), shape))
    reshape = helper.make_node("Reshape", [packed, shape], [data], name=f"{gather.name}_Q{bits}_reshape")
    quantized = helper.make_node(
        "GatherBlockQuantized", [data, node.input[1], scales, *([zero_points] if zero_points else [])],
        list(node.output), name=f"{gather.name}_Q{bits}", domain="com.microsoft", bits=bits,
        block_size=block_size, gather_axis=0, quantize_axis=1)
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, quantized)
    graph.node.insert(position, reshape)
    if not any(gn.node.input and gather.weight in gn.node.input for gn in iter_nodes(proto.graph)):
        for g, _ in iter_scopes(proto.graph):
            for tensor in list(g.initializer):
                if tensor.name == gather.weight:
                    g.initializer.remove(tensor)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def slow_path(bits: int, block_size: int, accuracy_level: int) -> str | None:
    """Why onnxruntime's CPU kernel for a MatMulNBits with these attributes dequantizes the whole weight
    per call before an SGEMM (its slow path), or None when it runs the fast blocked kernel."""
    if bits not in (4, 8):
        return f"{bits}-bit weights have no blocked CPU kernel"
    if block_size < 16 or block_size > 256 or block_size & (block_size - 1):
        return f"block size {block_size} is outside the kernels' 16-256 powers of two"
    if bits == 8 and accuracy_level != FAST_ACCURACY_LEVEL:
        return "8-bit weights run blocked only with accuracy level 4 (int8 activations)"
    return None


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _stored_inputs(proto: onnx.ModelProto) -> dict[str, set[str]]:
    """The initializers (blocks, scales, zero points) each quantized node reads, by the name of the node
    it replaced (onnxruntime names its nodes `<name>_Q<bits>`, `<name>_DQ_Q4`); a Gather's blocks through
    the Reshape in front of it."""
    constants = {t.name for g, _ in iter_scopes(proto.graph) for t in g.initializer}
    reshapes = {gn.node.output[0]: gn.node.input[0] for gn in iter_nodes(proto.graph) if gn.node.op_type == "Reshape"}
    found: dict[str, set[str]] = {}
    for gn in iter_nodes(proto.graph):
        node = gn.node
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized", "DequantizeLinear"):
            original = node.name.rsplit("_DQ_Q4", 1)[0] if "_DQ_Q4" in node.name else node.name.rsplit("_Q", 1)[0]
            inputs = list(node.input[1:]) if node.op_type == "MatMulNBits" else [
                reshapes.get(node.input[0], node.input[0]), *node.input[2:]] if node.op_type == "GatherBlockQuantized" \
                else list(node.input)
            found[original] = {i for i in inputs if i in constants}
    return found


def _result(loaded: LoadedModel, out: Path, config: QuantizeConfig, the_plan: WeightPlan, proto: onnx.ModelProto,
            bytes_after: int, prepare_seconds: float, seconds: float, copied: list[str]) -> QuantizeResult:
    weight_only = config.weight_only
    sizes = {t.name: tensor_nbytes(t) for g, _ in iter_scopes(proto.graph) for t in g.initializer}
    reads = _stored_inputs(proto)
    op_types: dict[str, OpTypeCount] = {}
    skipped: list[SkippedNode] = []
    weights: list[QuantizedWeight] = []
    for n in the_plan.nodes:
        counts = op_types.setdefault(n.op_type, OpTypeCount())
        counts.candidates += 1
        if n.name in the_plan.excluded:
            skipped.append(SkippedNode(n.name, n.op_type, n.graph, the_plan.excluded[n.name]))
            weights.append(QuantizedWeight(n.name, n.op_type, n.role, n.params, None, n.params * 4))
            continue
        counts.quantized += 1
        bits = the_plan.bits[n.name]
        head = the_plan.tied.get(n.name)
        own = reads.get(n.name, set()) - (reads.get(head, set()) if head else set())  # a tied head's are its own
        weights.append(QuantizedWeight(n.name, n.op_type, n.role, n.params, bits, sum(sizes[i] for i in own),
                                       tied_to=head))
    warnings = []
    used = {(the_plan.bits[n.name], block_size_of(n, the_plan.bits[n.name], weight_only))
            for n in the_plan.quantized("MatMul")}
    for bits, size in sorted(used):
        reason = slow_path(bits, size, weight_only.accuracy_level)
        if reason and weight_only.form is WeightForm.NBITS:
            warnings.append(f"{bits}-bit MatMulNBits will run onnxruntime's slow CPU path (dequantize, then SGEMM): "
                            f"{reason}")
    before, after = _default_opset(loaded.proto), _default_opset(proto)
    if after > before:
        warnings.append(f"blocked int4 DequantizeLinear needs opset 21: the model's opset was raised from {before} "
                        f"to {after} (onnxruntime loads the result; other runtimes: check)")
    heads = [n for n in the_plan.nodes if n.role == LM_HEAD and n.name in the_plan.excluded]
    if heads:
        warnings.append(f"the lm_head ({heads[0].name}) stays float: at {heads[0].params * 4 / 2**20:.0f} MiB it "
                        "bounds the decode speed-up")
    return QuantizeResult(
        input_path=str(loaded.path), output_path=str(out), mode=Mode.WEIGHT_ONLY, mode_reason="as requested",
        config={**config.to_dict(), "mode": Mode.WEIGHT_ONLY.value, "subgraphs": True}, data=None,
        calibration_samples=0, op_types=op_types, skipped=skipped, bytes_before=loaded.file_bytes,
        bytes_after=bytes_after, prepare_seconds=prepare_seconds, calibration_seconds=0.0,
        quantization_seconds=seconds, preprocess=None, warnings=warnings, weights=weights, copied=copied)



def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def bytes_by_role(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer bytes by what they are: embedding, lm_head, block (MatMul weights, float or
    block-quantized) and other (norms, biases, constants); a tensor two nodes read counts once."""
    sizes = {t.name: tensor_nbytes(t) for g, _ in iter_scopes(model.graph) for t in g.initializer}
    role_of: dict[str, str] = {}
    for n in weight_nodes(model):
        role_of.setdefault(n.weight, n.role)
    reshaped = {gn.node.output[0]: gn.node.input[0] for gn in iter_nodes(model.graph) if gn.node.op_type == "Reshape"}
    heads = _logits_producers(model.graph)
    dequantized = {gn.node.output[0]: gn.node for gn in iter_nodes(model.graph)
                   if gn.node.op_type == "DequantizeLinear"}
    for gn in iter_nodes(model.graph):
        node = gn.node
        if node.op_type == "MatMulNBits":
            role = LM_HEAD if node.name in heads else BLOCK
            for name in node.input[1:]:
                role_of.setdefault(name, role)
        elif node.op_type == "GatherBlockQuantized":
            for name in (reshaped.get(node.input[0], node.input[0]), *node.input[2:]):
                role_of.setdefault(name, EMBEDDING)
        elif node.op_type == "MatMul" and node.input[1] in dequantized:  # the QDQ form
            for name in dequantized[node.input[1]].input:
                role_of.setdefault(name, LM_HEAD if node.name in heads else BLOCK)
    totals = {EMBEDDING: 0, LM_HEAD: 0, BLOCK: 0, "other": 0}
    for name, size in sizes.items():
        totals[role_of.get(name, "other")] += size
    return totals


def slow_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """MatMulNBits nodes onnxruntime's CPU kernels run on their slow path, counted by the reason."""
    found: dict[str, int] = {}
    for gn in iter_nodes(model.graph):
        node = gn.node
        if node.op_type == "MatMulNBits":
            reason = slow_path(_attribute(node, "bits", 4), _attribute(node, "block_size", 0),
                               _attribute(node, "accuracy_level", 0))
            if reason:
                found[reason] = found.get(reason, 0) + 1
    return found
