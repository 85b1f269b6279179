"""Tiny seeded ONNX models shaped like the ones exporters produce in the wild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto], ir_version: int = 8, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qconvert-tests")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * (1.0 / np.sqrt(np.prod(shape[1:])))).astype(np.float32)


def conv_mlp(seed: int = 0) -> onnx.ModelProto:
    """Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → MatMul → Add: a little CNN
    with a dynamic batch dim."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_weights(rng, 8, 3, 3, 3), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(_weights(rng, 8, 8, 3, 3), "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array(_weights(rng, 8, 4), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["y"], name="fc_bias"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def mlp(seed: int = 0, hidden: int = 32) -> onnx.ModelProto:
    """MatMul → Relu → MatMul on a [batch, 16] input."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 16, hidden), "w1"),
             numpy_helper.from_array(_weights(rng, hidden, 4), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["y"], name="mm2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def with_if_subgraph(seed: int = 0) -> onnx.ModelProto:
    """A MatMul in the main graph and one in each branch of an If (as RNN/decoder exports do)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 16, 16), "w"),
             numpy_helper.from_array(_weights(rng, 16, 16), "w_then"),
             numpy_helper.from_array(_weights(rng, 16, 16), "w_else"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    then_g = helper.make_graph([helper.make_node("MatMul", ["h", "w_then"], ["t"], name="then_mm")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 16])])
    else_g = helper.make_graph([helper.make_node("MatMul", ["h", "w_else"], ["e"], name="else_mm")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 16])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)


def only_subgraph_matmul(seed: int = 0) -> onnx.ModelProto:
    """The only quantizable node sits inside an If body."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 16, 16), "w_then"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w_then"], ["t"], name="then_mm")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 16])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 16])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)


def initializers_as_inputs(seed: int = 0) -> onnx.ModelProto:
    """Weights also listed as graph inputs, as Paddle/Caffe2/IR<4 exporters write them."""
    model = mlp(seed)
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model.ir_version = 3
    return model


def constant_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights produced by Constant / ConstantOfShape nodes instead of initializers."""
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, 16, 32)
    w2 = _weights(rng, 32, 4)
    nodes = [
        helper.make_node("Constant", [], ["w1"], name="const_w1", value=numpy_helper.from_array(w1)),
        helper.make_node("Constant", [], ["w2"], name="const_w2", value=numpy_helper.from_array(w2)),
        helper.make_node("Constant", [], ["bias_shape"], name="const_shape",
                         value=numpy_helper.from_array(np.array([4], np.int64))),
        helper.make_node("ConstantOfShape", ["bias_shape"], ["b2"], name="bias_fill",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="bias"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [])


def no_quantizable_ops() -> onnx.ModelProto:
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("Exp", ["n"], ["y"], name="exp")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [])


def save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def inputs_for(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random float inputs for every non-initializer input, dynamic dims set to `batch`."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else batch
                for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def write_npz(model: onnx.ModelProto, path: Path, samples: int, seed: int = 0) -> Path:
    np.savez(path, **inputs_for(model, samples, seed))
    return path


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


LEGACY_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def legacy_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """A Caffe2-era model-zoo export shipped inside the onnx wheel (IR 3, opset 9, initializers
    listed as graph inputs, weights produced by ConstantOfShape nodes), with its constant-filled
    weights swapped for seeded random ones so outputs mean something. The structure is the
    exporter's: the weights are still produced by nodes, now Constant nodes. The final Softmax
    is dropped: with random weights it saturates or goes flat, and the logits are what to compare."""
    model = onnx.load(str(LEGACY_ZOO / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            continue
        fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
        if fill is None or fill.dtype != np.float32:
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        if len(shape) > 1:  # conv / fc weights: He-normal over the fan-in keeps activations in scale
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
        else:  # biases, batch-norm scale / mean / variance: positive and near 1
            value = rng.uniform(0.5, 1.5, shape)
        shape_name = node.input[0]
        del node.input[:]
        del node.attribute[:]
        node.op_type = "Constant"
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value.astype(np.float32))))
        _drop_initializer(model.graph, shape_name)
    last = model.graph.node[-1]
    if last.op_type == "Softmax":
        producer = next(n for n in model.graph.node if last.input[0] in n.output)
        producer.output[list(producer.output).index(last.input[0])] = last.output[0]
        model.graph.node.remove(last)
    return model


def _drop_initializer(graph: onnx.GraphProto, name: str) -> None:
    keep = [t for t in graph.initializer if t.name != name]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [v for v in graph.input if v.name != name]
    del graph.input[:]
    graph.input.extend(inputs)


def mlp_variant(kind: str, seed: int = 0) -> onnx.ModelProto:
    """mlp() with the same signature but a changed output: 'nan' (all NaN, computed at run time as
    Sqrt(-1): a NaN weight would be refused at load), 'zero' (all zeros), 'scaled' (times 0.5),
    'fp16' (cast to float16: only the dtype differs)."""
    model = mlp(seed)
    graph = model.graph
    mm2 = next(n for n in graph.node if n.name == "mm2")
    mm2.output[0] = "y_raw"
    if kind == "fp16":
        graph.node.append(helper.make_node("Cast", ["y_raw"], ["y"], name="to_fp16", to=TensorProto.FLOAT16))
        graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    elif kind == "nan":
        graph.initializer.append(numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"))
        graph.node.append(helper.make_node("Sqrt", ["minus_one"], ["factor"], name="nan_factor"))
        graph.node.append(helper.make_node("Mul", ["y_raw", "factor"], ["y"], name="post"))
    else:
        factor = {"zero": 0.0, "scaled": 0.5}[kind]
        graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "factor"))
        graph.node.append(helper.make_node("Mul", ["y_raw", "factor"], ["y"], name="post"))
    onnx.checker.check_model(model)
    return model


def outlier_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul → MatMul → Relu → MatMul where the first MatMul makes one channel 1000 times larger than
    the rest and the second reads it with a tiny weight: quantizing that channel's tensor per
    tensor wipes out the others, so mm1 (which reads it) breaks accuracy and nothing else does."""
    rng = np.random.default_rng(seed)
    w0 = _weights(rng, 16, 16)
    w0[:, 0] *= 1000.0
    w1 = _weights(rng, 16, 32)
    w1[0, :] *= 1e-3
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(_weights(rng, 32, 4), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["y"], name="mm2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def residual_block(seed: int = 0) -> onnx.ModelProto:
    """x [batch, 4 tokens, 16] → MatMul (two output channels 100 times larger than the rest, as a
    transformer's residual stream carries) → Add x → LayerNormalization → MatMul → y: quantizing the
    first MatMul's output per tensor wipes out its small channels."""
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, 16, 16)
    w1[:, :2] *= 100.0
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(_weights(rng, 16, 8), "w2"),
             numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(16, np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Add", ["h", "x"], ["r"], name="residual"),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="down")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])], inits)


def residual_stack(seed: int = 0, blocks: int = 8) -> onnx.ModelProto:
    """A residual stream with two outlier channels 100 times larger than the rest, to which
    `blocks` MatMuls of the input add in turn (x → MatMul → Add stream), read out by a MatMul that
    ignores the outliers: every quantized Add rounds the stream's small channels per tensor once
    more, so the error is spread evenly over the Adds and no few nodes explain it."""
    rng = np.random.default_rng(seed)
    w0 = _weights(rng, 16, 16)
    w0[:, :2] *= 100.0
    out = _weights(rng, 16, 8)
    out[:2, :] *= 1e-3
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(out, "w_out")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["s0"], name="embed")]
    for i in range(1, blocks + 1):
        inits.append(numpy_helper.from_array(_weights(rng, 16, 16), f"w{i}"))
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"h{i}"], name=f"block{i}"),
                  helper.make_node("Add", [f"s{i - 1}", f"h{i}"], [f"s{i}"], name=f"residual{i}")]
    nodes.append(helper.make_node("MatMul", [f"s{blocks}", "w_out"], ["y"], name="head"))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])], inits)


def masked_scores(seed: int = 0) -> onnx.ModelProto:
    """MatMul → Add of a causal mask holding -inf (as attention exports write it) → Softmax: the
    infinite values are in a constant no quantizable op reads as a weight."""
    rng = np.random.default_rng(seed)
    mask = np.triu(np.full((16, 16), -np.inf, np.float32), k=1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Constant", [], ["mask"], name="mask", value=numpy_helper.from_array(mask)),
             helper.make_node("Add", ["h", "mask"], ["scores"], name="masked"),
             helper.make_node("Where", ["cond", "scores", "neg_inf"], ["picked"], name="where"),
             helper.make_node("Softmax", ["picked"], ["y"], name="softmax", axis=-1)]
    inits = [numpy_helper.from_array(_weights(rng, 16, 16), "w"),
             numpy_helper.from_array(np.ones((16, 16), bool), "cond"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "neg_inf")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])], inits)


def externalize(model: onnx.ModelProto, folder: Path, name: str = "m.onnx", sidecar: str = "m.onnx.data") -> Path:
    """Write `model` to `folder/name` with every initializer of its main graph in `folder/sidecar`,
    one after the other, the way onnx.save lays them out (location, offset, length); the entries
    are then plain to edit in a test."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    folder.mkdir(parents=True, exist_ok=True)
    offset = 0
    with open(folder / sidecar, "wb") as f:
        for tensor in model.graph.initializer:
            data = numpy_helper.to_array(tensor).tobytes()
            f.write(data)
            tensor.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(field)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", sidecar), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def paddle_dynamic_dims(seed: int = 0) -> onnx.ModelProto:
    """`mlp` as Paddle2ONNX writes it: a dynamic dim as `dim_value: -1`, in inputs, outputs and value_infos."""
    model = mlp(seed)
    model.graph.value_info.extend([helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 32]),
                                   helper.make_tensor_value_info("hr", TensorProto.FLOAT, [1, 32])])
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        value.type.tensor_type.shape.dim[0].dim_value = -1
    return model


def row_bias_dense(seed: int = 0) -> onnx.ModelProto:
    """Dense layers as tf2onnx writes them: MatMul then Add of a [1, N] bias, which onnxruntime's
    optimiser fuses into a Gemm whose C is [1, N]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 16, 32), "w1"),
             numpy_helper.from_array(rng.standard_normal((1, 32)).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(_weights(rng, 32, 4), "w2"),
             numpy_helper.from_array(rng.standard_normal((1, 4)).astype(np.float32) * 0.1, "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="dense1/MatMul"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="dense1/BiasAdd"),
             helper.make_node("Relu", ["a1"], ["r1"], name="dense1/Relu"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="dense2/MatMul"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="dense2/BiasAdd")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def compute_in_branches(seed: int = 0) -> onnx.ModelProto:
    """The main graph only routes: every quantizable node sits in an If branch, with the branch's own
    weights (as spox exports of a voice-activity detector do)."""
    rng = np.random.default_rng(seed)

    def branch(name: str) -> onnx.GraphProto:
        inits = [numpy_helper.from_array(_weights(rng, 16, 32), f"{name}_w1"),
                 numpy_helper.from_array(_weights(rng, 32, 4), f"{name}_w2")]
        nodes = [helper.make_node("MatMul", ["x", f"{name}_w1"], [f"{name}_h"], name=f"{name}_mm1"),
                 helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"], name=f"{name}_relu"),
                 helper.make_node("MatMul", [f"{name}_r", f"{name}_w2"], [f"{name}_y"], name=f"{name}_mm2")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                 ["batch", 4])], inits)

    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="route", then_branch=branch("big"),
                              else_branch=branch("small"))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                  [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])


def shared_outer_weights(seed: int = 0) -> onnx.ModelProto:
    """If branches whose Conv and MatMul weights are main-graph initializers, one set shared by both
    branches (the way recent PyTorch exporters write them); one branch reads its MatMul weight through
    an Identity."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 4, 3, 3, 3), "conv.weight"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "conv.bias"),
             numpy_helper.from_array(_weights(rng, 4, 4), "head.weight"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]

    def branch(name: str, through_identity: bool) -> onnx.GraphProto:
        weight = "head.weight"
        nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], [f"{name}_c"], name=f"{name}_conv",
                                  pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"], name=f"{name}_relu"),
                 helper.make_node("GlobalAveragePool", [f"{name}_r"], [f"{name}_p"], name=f"{name}_pool"),
                 helper.make_node("Flatten", [f"{name}_p"], [f"{name}_f"], name=f"{name}_flatten")]
        if through_identity:
            nodes.append(helper.make_node("Identity", ["head.weight"], [f"{name}_w"], name=f"{name}_identity"))
            weight = f"{name}_w"
        nodes.append(helper.make_node("MatMul", [f"{name}_f", weight], [f"{name}_y"], name=f"{name}_head"))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                 ["batch", 4])])

    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="rate", then_branch=branch("rate8k", False),
                              else_branch=branch("rate16k", True))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def row_bias_gemm(seed: int = 0) -> onnx.ModelProto:
    """A Gemm with a [1, N] bias (what onnxruntime's optimiser makes of `row_bias_dense`), then a MatMul."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, 16, 32), "w1"),
             numpy_helper.from_array(rng.standard_normal((1, 32)).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(_weights(rng, 32, 4), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="dense1"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="dense2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def tiny_decoder(seed: int = 0, *, vocab: int = 40, hidden: int = 16, layers: int = 2, heads: int = 2,
                 cache: bool = True, past: str = "past_key_values.{layer}.{kind}",
                 present: str = "present.{layer}.{kind}", kinds: tuple[str, str] = ("key", "value"),
                 perturb: float = 0.0, broken: bool = False, max_positions: int = 64,
                 float16_cache: bool = False) -> onnx.ModelProto:
    """A GPT-style decoder in onnxruntime-genai's layout: input_ids, attention_mask, position_ids and
    per layer a past key/value [batch, heads, past_seq, head_size] in; logits [batch, seq, vocab] and
    the present key/value (past concatenated with the new tokens') out. Token + position embeddings,
    `layers` blocks of causal multi-head attention (the mask built from the past's length and the
    attention mask) and a ReLU MLP, both residual, then LayerNormalization and the LM head.

    `cache=False` is the same network without a KV cache: input_ids and attention_mask in, logits
    out, positions counted from 0; with the same seed it computes the same logits. `past`/`present`
    name the cache tensors (`kinds` fills `{kind}`). `perturb` adds seeded noise of that relative size
    to every weight (a stand-in for quantization error); `broken` multiplies the logits by NaN at run
    time; `float16_cache` reads and returns the cache in float16 (computing in float32)."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1000)
    head_size = hidden // heads
    inits: list[onnx.TensorProto] = []

    def weight(name: str, *shape: int, scale: float) -> str:
        value = rng.standard_normal(shape) * scale
        if perturb:
            value = value + noise.standard_normal(shape) * scale * perturb
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    nodes: list[onnx.NodeProto] = []
    wte = weight("wte", vocab, hidden, scale=1.0)
    wpe = weight("wpe", max_positions, hidden, scale=0.5)
    const("zero", np.array(0, np.int64))
    const("one", np.array(1, np.int64))
    const("axis0", np.array([0], np.int64))
    const("axis1", np.array([1], np.int64))
    const("axes12", np.array([1, 2], np.int64))
    const("neg_big", np.array(-1e9, np.float32))
    const("zero_f", np.array(0.0, np.float32))
    const("one_f", np.array(1.0, np.float32))
    const("heads_shape", np.array([0, 0, heads, head_size], np.int64))
    const("hidden_shape", np.array([0, 0, hidden], np.int64))
    const("scale", np.array(1.0 / np.sqrt(head_size), np.float32))

    def cache_name(template: str, layer: int, kind: int) -> str:
        return template.format(layer=layer, kind=kinds[kind])

    seq = node("Shape", ["input_ids"], "seq", start=1, end=2)
    if cache:
        past_len = node("Shape", [cache_name(past, 0, 0)], "past_len", start=2, end=3)
        positions = node("Gather", [wpe, "position_ids"], "pos_emb")
    else:
        past_len = const("past_len", np.array([0], np.int64))
        seq_scalar = node("Squeeze", [seq, "axis0"], "seq_scalar")
        position_range = node("Range", ["zero", seq_scalar, "one"], "position_range")
        positions = node("Gather", [wpe, position_range], "pos_emb")
    x = node("Add", [node("Gather", [wte, "input_ids"], "tok_emb"), positions], "x0")
    total = node("Add", [past_len, seq], "total")
    q_positions = node("Range", [node("Squeeze", [past_len, "axis0"], "past_scalar"),
                                 node("Squeeze", [total, "axis0"], "total_scalar"), "one"], "q_positions")
    k_positions = node("Range", ["zero", "total_scalar", "one"], "k_positions")
    allowed = node("LessOrEqual", [node("Unsqueeze", [k_positions, "axis0"], "k_row"),
                                   node("Unsqueeze", [q_positions, "axis1"], "q_col")], "allowed")
    causal = node("Where", [allowed, "zero_f", "neg_big"], "causal")
    masked = node("Sub", ["one_f", node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)], "masked")
    padding = node("Unsqueeze", [node("Mul", [masked, "neg_big"], "padding_2d"), "axes12"], "padding")
    bias = node("Add", [causal, padding], "attention_bias")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"])]
    if cache:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(layers):
        def split(name: str, source: str, layer: int) -> str:
            projected = node("MatMul", [source, weight(f"l{layer}_w{name}", hidden, hidden, scale=hidden ** -0.5)],
                             f"l{layer}_{name}")
            return node("Transpose", [node("Reshape", [projected, "heads_shape"], f"l{layer}_{name}_heads")],
                        f"l{layer}_{name}_bhsd", perm=[0, 2, 1, 3])

        q, k, v = split("q", x, i), split("k", x, i), split("v", x, i)
        if cache:
            kv_type = TensorProto.FLOAT16 if float16_cache else TensorProto.FLOAT
            full = []
            for kind, new in enumerate((k, v)):
                past_name, present_name = cache_name(past, i, kind), cache_name(present, i, kind)
                inputs.append(helper.make_tensor_value_info(past_name, kv_type,
                                                            ["batch", heads, "past_seq", head_size]))
                outputs.append(helper.make_tensor_value_info(present_name, kv_type,
                                                             ["batch", heads, "total_seq", head_size]))
                if float16_cache:
                    read = node("Cast", [past_name], f"{past_name}_f32", to=TensorProto.FLOAT)
                    full.append(node("Concat", [read, new], f"{present_name}_f32", axis=2))
                    node("Cast", [full[-1]], present_name, to=TensorProto.FLOAT16)
                else:
                    full.append(node("Concat", [past_name, new], present_name, axis=2))
            k, v = full
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [k], f"l{i}_kt", perm=[0, 1, 3, 2])],
                                   f"l{i}_qk"), "scale"], f"l{i}_scores")
        probs = node("Softmax", [node("Add", [scores, bias], f"l{i}_biased")], f"l{i}_probs", axis=-1)
        merged = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], f"l{i}_context")],
                                       f"l{i}_bshd", perm=[0, 2, 1, 3]), "hidden_shape"], f"l{i}_merged")
        attended = node("MatMul", [merged, weight(f"l{i}_wo", hidden, hidden, scale=hidden ** -0.5)], f"l{i}_attn")
        x = node("Add", [x, attended], f"l{i}_x1")
        up = node("Relu", [node("MatMul", [x, weight(f"l{i}_w1", hidden, 2 * hidden, scale=hidden ** -0.5)],
                                f"l{i}_up_mm")], f"l{i}_up")
        down = node("MatMul", [up, weight(f"l{i}_w2", 2 * hidden, hidden, scale=(2 * hidden) ** -0.5)], f"l{i}_down")
        x = node("Add", [x, down], f"l{i}_x2")
    const("gamma", np.ones(hidden, np.float32))
    const("beta", np.zeros(hidden, np.float32))
    normed = node("LayerNormalization", [x, "gamma", "beta"], "normed", axis=-1)
    head = weight("lm_head", hidden, vocab, scale=3.0 * hidden ** -0.5)
    if broken:
        node("MatMul", [normed, head], "raw_logits")
        const("minus_one", np.array(-1.0, np.float32))
        node("Mul", ["raw_logits", node("Sqrt", ["minus_one"], "nan")], "logits")
    else:
        node("MatMul", [normed, head], "logits")
    return _model(nodes, inputs, outputs, inits)


def shared_input_matmuls(seed: int = 0) -> onnx.ModelProto:
    """x [batch, seq, 16] -> Mul -> h; MatMuls `mma` and `mmb` both read h, `mmc` reads Relu(h @ wa)
    [.., 24]: two activations for three MatMuls, as q/k/v projections share theirs."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 3.0, 16).astype(np.float32), "gain"),
             numpy_helper.from_array(_weights(rng, 16, 24), "wa"),
             numpy_helper.from_array(_weights(rng, 16, 8), "wb"),
             numpy_helper.from_array(_weights(rng, 24, 4), "wc")]
    nodes = [helper.make_node("Mul", ["x", "gain"], ["h"], name="gain"),
             helper.make_node("MatMul", ["h", "wa"], ["a"], name="mma"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "wc"], ["y"], name="mmc"),
             helper.make_node("MatMul", ["h", "wb"], ["z"], name="mmb")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4]),
                   helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "seq", 8])], inits)


def overflowing_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul → Mul by 4e4 → Clip at 0 → Reshape → Div by 4e4 → MatMul: the middle activations reach
    ~1e5 (beyond float16's 65504) while the input, the weights and the output are ordinary, as in a
    model whose internal scaling float16 cannot hold. Clip (a ReLU) and Reshape have float16 kernels
    in onnxruntime's CPU provider, so there too the float16 model breaks (its casts saturate at
    65504; a GPU computes inf)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_weights(rng, 16, 16) * 4, "w1"),
        numpy_helper.from_array(np.array(4e4, np.float32), "up"),
        numpy_helper.from_array(np.array(4e4, np.float32), "down"),
        numpy_helper.from_array(_weights(rng, 16, 4), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([-1, 16], np.int64), "rows"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Mul", ["h", "up"], ["big"], name="scale_up"),
        helper.make_node("Clip", ["big", "zero"], ["clipped"], name="relu"),
        helper.make_node("Reshape", ["clipped", "rows"], ["big_relu"], name="rows"),
        helper.make_node("Div", ["big_relu", "down"], ["small"], name="scale_down"),
        helper.make_node("MatMul", ["small", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def qat_mlp(seed: int = 0) -> onnx.ModelProto:
    """A QAT export's layout on a small MLP: uint8 activation Q/DQ on the input and the hidden layer;
    each float weight behind QuantizeLinear → DequantizeLinear, int8 per output channel (axis 1 for
    MatMul's [K, N]), its zero point reached through an Identity (as torch's exporter shares them),
    with a few weights beyond the grid (saturated) and some exactly on a rounding tie."""
    rng = np.random.default_rng(seed)
    w1, w2 = _weights(rng, 16, 32), _weights(rng, 32, 4)
    s1 = (np.abs(w1).max(axis=0) / 127.5).astype(np.float32)  # torch's scale: beyond-range weights exist
    w1[0, :4] = (np.array([2.5, -3.5, 0.5, -127.5]) * s1[:4]).astype(np.float32)  # ties, as far as float32 goes
    s2 = (np.abs(w2).max(axis=0) / 127.0).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(s1, "w1_scale"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(s2, "w2_scale"),
        numpy_helper.from_array(np.zeros(32, np.int8), "zp32"), numpy_helper.from_array(np.zeros(4, np.int8), "zp4"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "h_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "h_zp"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
    ]
    nodes = [
        helper.make_node("Identity", ["zp32"], ["zp32_shared"], name="zp_identity"),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="x_dq"),
        helper.make_node("QuantizeLinear", ["w1", "w1_scale", "zp32_shared"], ["w1q"], name="w1_q", axis=1),
        helper.make_node("DequantizeLinear", ["w1q", "w1_scale", "zp32_shared"], ["w1d"], name="w1_dq", axis=1),
        helper.make_node("MatMul", ["xd", "w1d"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu"),
        helper.make_node("QuantizeLinear", ["h", "h_scale", "h_zp"], ["hq"], name="h_q"),
        helper.make_node("DequantizeLinear", ["hq", "h_scale", "h_zp"], ["hd"], name="h_dq"),
        helper.make_node("QuantizeLinear", ["w2", "w2_scale", "zp4"], ["w2q"], name="w2_q", axis=1),
        helper.make_node("DequantizeLinear", ["w2q", "w2_scale", "zp4"], ["w2d"], name="w2_dq", axis=1),
        helper.make_node("MatMul", ["hd", "w2d"], ["y"], name="fc2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
