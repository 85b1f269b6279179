"""Weight-only quantization: block-wise 4- and 8-bit weights, activations left float (language models).

Every token a decoder generates reads every weight once, so bytes per weight set its speed. MatMuls
with a constant weight become onnxruntime's `MatMulNBits` (or, in the QDQ form, blocked int4
DequantizeLinear → MatMul); embedding tables read by Gather become `GatherBlockQuantized`. An
embedding tied to the lm_head (the table and the lm_head weight are one matrix, as SmolLM2, Llama
3.2 and Gemma export them) is stored once: the Gather reads the lm_head's packed blocks.

Nodes named in `WeightOnlyConfig.eight_bit` get 8 bits in a 4-bit model: the accuracy search keeps
the most sensitive weights there.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert import progress
from qconvert.config import FAST_ACCURACY_LEVEL, Mode, QuantizeConfig, WeightForm, WeightOnlyConfig
from qconvert.errors import ModelError, NothingQuantizedError, UsageError, first_line
from qconvert.model.files import check_output_path, move_into_place, staging_dir
from qconvert.model.folders import copy_model_folder
from qconvert.model.graph import PROTOBUF_LIMIT, iter_nodes, iter_scopes, model_nbytes, subgraphs, tensor_nbytes
from qconvert.model.loading import LoadedModel, load_model
from qconvert.providers import cpu_session, quiet_onnxruntime
from qconvert.quantization import nbits
from qconvert.quantization.planning import quantization_kinds
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


def name_unnamed(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: exclusions, 8-bit choices and reports need one."""
    taken = {gn.node.name for gn in iter_nodes(model.graph) if gn.node.name}
    counter = 0
    for gn in iter_nodes(model.graph):
        if not gn.node.name:
            while f"{gn.node.op_type}_{counter}" in taken:
                counter += 1
            gn.node.name = f"{gn.node.op_type}_{counter}"
            taken.add(gn.node.name)


def materialize_transposed_weights(model: onnx.ModelProto) -> int:
    """MatMul(x, Transpose(W)) with W an initializer → MatMul(x, Wᵀ) with Wᵀ stored: how exporters
    write a tied lm_head. The quantizer needs the weight as a constant. Returns the MatMuls rewired."""
    from onnx import numpy_helper

    rewired = 0
    for graph, outer in iter_scopes(model.graph):
        local = {t.name: t for t in graph.initializer}
        scope = {**outer, **local}
        transposed = {}
        for node in graph.node:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            if node.op_type == "Transpose" and node.input[0] in scope and perm == [1, 0] \
                    and len(scope[node.input[0]].dims) == 2:
                transposed[node.output[0]] = scope[node.input[0]]
        made: dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in transposed:
                source = transposed[node.input[1]]
                if source.name not in made:
                    name = f"{source.name}.transposed"
                    graph.initializer.append(numpy_helper.from_array(
                        np.ascontiguousarray(numpy_helper.to_array(source).T), name))
                    made[source.name] = name
                node.input[1] = made[source.name]
                rewired += 1
        read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        read |= {i for node in graph.node for _, body in subgraphs(node) for n in body.node for i in n.input}
        for node in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in transposed]:
            if node.output[0] not in read:
                graph.node.remove(node)
    return rewired


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


def plan_weights(model: onnx.ModelProto, quantize: QuantizeConfig) -> WeightPlan:
    """Which MatMul and Gather weights to quantize, with how many bits, and why the others stay float."""
    from onnx import numpy_helper

    config = quantize.weight_only
    nodes = weight_nodes(model)
    excluded: dict[str, str] = {}
    tensors = {t.name: t for g, _ in iter_scopes(model.graph) for t in g.initializer}
    for n in nodes:
        reason = _float_reason(n, quantize, config)
        if reason:
            excluded[n.name] = reason
    bits = {n.name: 8 if config.bits == 8 or any(fnmatch.fnmatchcase(n.name, p) for p in config.eight_bit) else 4
            for n in nodes if n.name not in excluded}
    tied: dict[str, str] = {}
    for gather in (n for n in nodes if n.role == EMBEDDING):
        for head in (n for n in nodes if n.role == LM_HEAD and (n.rows, n.cols) == (gather.cols, gather.rows)):
            if np.array_equal(numpy_helper.to_array(tensors[head.weight]),
                              numpy_helper.to_array(tensors[gather.weight]).T):
                tied[gather.name] = head.name
                if head.name in bits and gather.name in bits:  # one matrix, one width: the Gather reads the head's
                    bits[gather.name] = bits[head.name]
                break
    return WeightPlan(tuple(nodes), excluded, bits, tied)


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
        if n.cols % config.block_size:
            return f"embedding width {n.cols} is not a multiple of the block size {config.block_size}"
    return None


def quantize_weights(model: str | Path | LoadedModel, output: str | Path, *, config: QuantizeConfig | None = None,
                     force: bool = False) -> QuantizeResult:
    """Quantize `model`'s MatMul and embedding weights block-wise into `output`, written atomically
    (external data when the model has it or needs it), beside copies of its onnxruntime-genai
    folder's config and tokenizer files when it has them."""
    config = config or QuantizeConfig(mode=Mode.WEIGHT_ONLY)
    weight_only = config.weight_only
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    out = Path(output)
    check_output_path(out, inputs=(loaded.path,), force=force)
    kinds = quantization_kinds(loaded.proto)
    if any(kinds.values()):
        found = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        raise ModelError(f"{loaded.path} is already quantized ({found} nodes)",
                         hint="quantize the FP32 original instead")
    started = time.perf_counter()
    with progress.task("reading weights", total=None):
        proto = loaded.owned_copy()
    name_unnamed(proto)
    materialize_transposed_weights(proto)
    the_plan = plan_weights(proto, config)
    prepare_seconds = time.perf_counter() - started
    _check_plan(loaded.path, the_plan, weight_only)
    t0 = time.perf_counter()
    with progress.task("quantizing weights", total=None), quiet_onnxruntime():
        proto = _quantize(proto, the_plan, weight_only)
    seconds = time.perf_counter() - t0
    external = loaded.uses_external_data or model_nbytes(proto) >= PROTOBUF_LIMIT
    with staging_dir(out) as work:
        staged = work / out.name
        _save(proto, staged, external)
        _check_loads(staged)
        bytes_after = move_into_place(staged, out)
    copied = copy_model_folder(loaded.path, out)
    return _result(loaded, out, config, the_plan, proto, bytes_after, prepare_seconds, seconds, copied)


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
    for width in (8, 4):
        chosen = {n.name for n in matmuls if the_plan.bits[n.name] == width}
        if chosen:
            others = {n.name for n in the_plan.nodes if n.op_type == "MatMul"} - chosen
            proto = nbits.quantize_matmuls(proto, bits=width, block_size=config.block_size,
                                           symmetric=config.symmetric, accuracy_level=config.accuracy_level,
                                           qdq=qdq, exclude=others)
    for gather in the_plan.quantized("Gather"):
        head = the_plan.tied.get(gather.name)
        shared = head is not None and head not in the_plan.excluded and the_plan.bits[head] == the_plan.bits[
            gather.name] and not qdq
        _replace_gather(proto, gather, the_plan.bits[gather.name], config, head if shared else None)
    return proto


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
    if head is not None:
        _, matmul = _find(proto, f"{head}_Q{bits}")
        packed, scales = matmul.input[1], matmul.input[2]
        zero_points = matmul.input[3] if len(matmul.input) > 3 and matmul.input[3] else None
    else:
        scope = {t.name: t for g, _ in iter_scopes(proto.graph) for t in g.initializer}
        table = numpy_helper.to_array(scope[gather.weight])
        blocks = nbits.pack(np.ascontiguousarray(table.T), bits=bits, block_size=config.block_size,
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
        block_size=config.block_size, gather_axis=0, quantize_axis=1)
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


def _save(proto: onnx.ModelProto, path: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


def _check_loads(path: Path) -> None:
    try:
        with quiet_onnxruntime():
            cpu_session(path)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the weight-only model it produced: {first_line(exc)}",
                         hint="keep the failing node in float with --exclude-nodes; no output was written") from exc


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


def _stored_bytes(proto: onnx.ModelProto) -> dict[str, int]:
    """Bytes of the constant inputs (blocks, scales, zero points) of each quantized node, by the name
    of the node it replaced (onnxruntime names its nodes `<name>_Q<bits>`, `<name>_DQ_Q4`)."""
    sizes = {t.name: tensor_nbytes(t) for g, _ in iter_scopes(proto.graph) for t in g.initializer}
    stored: dict[str, int] = {}
    for gn in iter_nodes(proto.graph):
        node = gn.node
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized", "DequantizeLinear"):
            original = node.name.rsplit("_DQ_Q4", 1)[0] if "_DQ_Q4" in node.name else node.name.rsplit("_Q", 1)[0]
            inputs = list(node.input[1:]) if node.op_type == "MatMulNBits" else list(node.input)
            stored[original] = sum(sizes.get(i, 0) for i in inputs if i)
    reshapes = {gn.node.output[0]: gn.node.input[0] for gn in iter_nodes(proto.graph) if gn.node.op_type == "Reshape"}
    for gn in iter_nodes(proto.graph):  # a Gather reading through a Reshape of its own blocks
        node = gn.node
        if node.op_type == "GatherBlockQuantized" and node.input[0] in reshapes:
            original = node.name.rsplit("_Q", 1)[0]
            source = reshapes[node.input[0]]
            stored[original] = sizes.get(source, 0) + sum(sizes.get(i, 0) for i in node.input[2:] if i)
    return stored


def _result(loaded: LoadedModel, out: Path, config: QuantizeConfig, the_plan: WeightPlan, proto: onnx.ModelProto,
            bytes_after: int, prepare_seconds: float, seconds: float, copied: list[str]) -> QuantizeResult:
    weight_only = config.weight_only
    stored = _stored_bytes(proto)
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
        shared = head is not None and stored.get(head) is not None and the_plan.bits.get(head) == bits
        weights.append(QuantizedWeight(n.name, n.op_type, n.role, n.params, bits,
                                       0 if shared else stored.get(n.name, 0), tied_to=head))
    warnings = []
    used = {the_plan.bits[n.name] for n in the_plan.quantized("MatMul")}
    for bits in sorted(used):
        reason = slow_path(bits, weight_only.block_size, weight_only.accuracy_level)
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
