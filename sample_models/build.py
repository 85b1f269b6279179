"""Regenerate the sample models and their data, reproducibly.

Trains a CNN and a small ViT-style transformer encoder on scikit-learn's digits (bundled with
scikit-learn, no network), exports both to ONNX, and writes calibration and evaluation data.
Heavy enough in compute (tens of MFLOPs per inference) that int8 shows its real speedup, small
enough in weights to ship in the repository.

Also fine-tunes that CNN with PyTorch's quantization-aware training (fake quantization) into
`digits_cnn_qat.onnx`, a QDQ model whose weights stay float behind QuantizeLinear/DequantizeLinear.

Also trains `tiny_llm/`, a llama-like decoder (byte-level BPE, RoPE, grouped-query attention,
SwiGLU, tied embeddings) on the Python documentation that ships with Python (`pydoc_data`), and
exports it in onnxruntime-genai's decoder layout with a KV cache.

    pip install torch==2.13.0 scikit-learn tokenizers onnx onnxruntime
    python sample_models/build.py                   # everything
    python sample_models/build.py --only tiny_llm   # one part: digits | qat | tiny_llm
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.ao.quantization as tq
from onnx import numpy_helper
from sklearn.datasets import load_digits
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
SEED = 0
SIZE = 32  # digits are 8x8; upsampled so convolutions and attention have real work to do
EVAL_COUNT = 360
CALIB_COUNT = 128
OPSET = 17


def seed_everything() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Train / eval split, upsampled to 32x32 and normalised by the training set's mean and std."""
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    eval_idx, train_idx = order[:EVAL_COUNT], order[EVAL_COUNT:]
    mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
    images = ((images - mean) / std).astype(np.float32)
    calib_idx = train_idx[np.random.default_rng(SEED + 1).permutation(len(train_idx))[:CALIB_COUNT]]
    return (images[train_idx], labels[train_idx], images[eval_idx], labels[eval_idx], images[calib_idx],
            {"mean": mean, "std": std})


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, 32), block(32, 32), nn.MaxPool2d(2),
            block(32, 64), block(64, 64), nn.MaxPool2d(2),
            block(64, 64),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """ViT-style: 4x4 patches (64 tokens), 3 pre-norm encoder layers, mean pooling."""

    def __init__(self, dim: int = 96, depth: int = 3, heads: int = 4, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        tokens = (SIZE // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, 4 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        p, g = self.patch, SIZE // self.patch
        x = image.reshape(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
        x = self.layers(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


def shift(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels, padding with the background value."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    padded = F.pad(batch, (max_shift,) * 4, value=float(batch.min()))
    return padded[:, :, max_shift + dy : max_shift + dy + SIZE, max_shift + dx : max_shift + dx + SIZE]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    generator = torch.Generator().manual_seed(SEED)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(xs) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(shift(xs[idx], generator)), ys[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def export(model: nn.Module, path: Path, sample: np.ndarray) -> None:
    """Export with a dynamic batch axis and check onnxruntime agrees with torch."""
    example = torch.from_numpy(sample[:4])
    torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                      dynamo=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    with torch.no_grad():
        expected = model(torch.from_numpy(sample[:16])).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": sample[:16]})[0]
    assert np.abs(expected - got).max() < 1e-4, "onnxruntime disagrees with torch"


def macs(path: Path) -> int:
    """Multiply-accumulates of Conv, MatMul and Gemm for one sample, from inferred shapes."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    total = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            total += int(np.prod(out)) * a[-1]
    return total


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def build_digits() -> None:
    seed_everything()
    x_train, y_train, x_eval, y_eval, x_calib, norm = load_data()
    np.savez_compressed(HERE / "digits.calib.npz", image=x_calib)
    np.savez_compressed(HERE / "digits.eval.npz", image=x_eval, labels=y_eval)
    path = HERE / "build_report.json"  # other parts' keys (digits_cnn_qat) are kept
    report: dict[str, object] = {**(json.loads(path.read_text()) if path.exists() else {}), "normalisation": norm}
    for name, model, epochs, lr in (
        ("digits_cnn", DigitsCNN(), 12, 3e-3),
        ("digits_transformer", DigitsTransformer(), 60, 2e-3),
    ):
        torch.manual_seed(SEED)
        train(model, x_train, y_train, epochs, lr)
        path = HERE / f"{name}.onnx"
        export(model, path, x_eval)
        params = sum(p.numel() for p in model.parameters())
        report[name] = {"top1": round(accuracy(path, x_eval, y_eval), 4), "parameters": params,
                        "mflops": round(2 * macs(path) / 1e6, 1), "bytes": path.stat().st_size}
        print(name, report[name])  # noqa: T201
    (HERE / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# digits_cnn_qat: the trained CNN fine-tuned with fake quantization, exported as a QDQ model.

QAT_EPOCHS, QAT_LR = 3, 3e-4


def load_cnn(path: Path) -> DigitsCNN:
    """A DigitsCNN holding an exported CNN's weights.

    The exporter folded each BatchNorm into its Conv (weight and a new bias), so each BatchNorm gets
    the identity (mean 0, var 1, eps 0, gamma 1) and the Conv's bias as its beta: exact, and folded
    back bit for bit by `fuse_modules`.
    """
    proto = onnx.load(str(path))
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    model = DigitsCNN().eval()
    blocks = [(i, m) for i, m in enumerate(model.features) if isinstance(m, nn.Sequential)]
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(blocks)
    with torch.no_grad():
        for node, (i, (conv, bn, _)) in zip(convs, blocks, strict=True):
            assert node.name == f"/features/features.{i}/features.{i}.0/Conv", node.name
            conv.weight.copy_(weights[node.input[1]])
            bn.eps = 0.0
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.copy_(weights[node.input[2]])
        model.head.weight.copy_(weights["head.weight"])
        model.head.bias.copy_(weights["head.bias"])
    return model


class QuantDigitsCNN(nn.Module):
    """DigitsCNN between eager-mode quant stubs: fake-quantized input, and pooled features (the
    mean is a functional op, which eager mode leaves unobserved) so that the head reads int8 too."""

    def __init__(self, fp32: DigitsCNN) -> None:
        super().__init__()
        self.quant, self.features, self.pool_quant = tq.QuantStub(), fp32.features, tq.QuantStub()
        self.head, self.dequant = fp32.head, tq.DeQuantStub()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(image))
        return self.dequant(self.head(self.pool_quant(x.mean(dim=(2, 3)))))


def prepare_qat(fp32: DigitsCNN) -> QuantDigitsCNN:
    """Conv+BN+ReLU fused (BN folded), then torch.ao's eager QAT: u8 per-tensor activations (moving
    average min/max), s8 symmetric per-output-channel weights (zero point 0), all FakeQuantize."""
    model = QuantDigitsCNN(fp32).eval()
    blocks = [f"features.{i}" for i, m in enumerate(fp32.features) if isinstance(m, nn.Sequential)]
    tq.fuse_modules(model, [[f"{b}.0", f"{b}.1", f"{b}.2"] for b in blocks], inplace=True)
    activation = tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                           dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    weight = tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                       quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                       ch_axis=0)
    model.qconfig = tq.QConfig(activation=activation, weight=weight)
    return tq.prepare_qat(model.train())


def qdq_layout(proto: onnx.ModelProto) -> dict[str, int]:
    """Check and count the QAT layout: every Conv/Gemm reads DQ(Q(float initializer W, axis 0, s8 zero
    point 0)) as its weight and a DQ'd activation (maybe max-pooled); the other Q/DQ pairs are per-tensor
    u8 activations."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def const(name: str) -> onnx.TensorProto:  # the exporter shares equal zero points through Identity
        while name not in inits:
            assert producer[name].op_type == "Identity", name
            name = producer[name].input[0]
        return inits[name]

    weights = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producer[node.input[1]]
        q = producer[dq.input[0]]
        assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear"), node.name
        assert inits[q.input[0]].data_type == onnx.TensorProto.FLOAT, node.name
        assert [a.i for a in q.attribute if a.name == "axis"] == [0], node.name
        zero_point = const(q.input[2])
        assert zero_point.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zero_point).any()
        source = producer[node.input[0]]  # MaxPool keeps its input's grid, so it gets no Q/DQ of its own
        source = producer[source.input[0]] if source.op_type == "MaxPool" else source
        assert source.op_type == "DequantizeLinear", node.name
        weights += 1
    pairs = 0
    for dq in graph.node:
        if dq.op_type == "DequantizeLinear" and producer[dq.input[0]].input[0] not in inits:
            assert producer[dq.input[0]].op_type == "QuantizeLinear"
            assert const(dq.input[1]).dims == [1] and const(dq.input[2]).data_type == onnx.TensorProto.UINT8
            pairs += 1
    counts = collections.Counter(n.op_type for n in graph.node)
    return {"quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
            "float_weights_behind_qdq": weights, "activation_qdq_pairs": pairs}


def build_qat() -> None:
    """Fine-tune the committed digits_cnn.onnx with fake quantization and export the QDQ model."""
    seed_everything()
    x_train, y_train, x_eval, y_eval, _, _ = load_data()
    committed = np.load(HERE / "digits.eval.npz")
    assert np.array_equal(committed["image"], x_eval) and np.array_equal(committed["labels"], y_eval)
    fp32_path, path = HERE / "digits_cnn.onnx", HERE / "digits_cnn_qat.onnx"
    fp32 = load_cnn(fp32_path)
    with torch.no_grad():
        expected = fp32(torch.from_numpy(x_eval)).numpy()
    got = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(None, {"image": x_eval})[0]
    fp32_diff = float(np.abs(expected - got).max())
    assert fp32_diff < 1e-5, f"the loaded CNN disagrees with digits_cnn.onnx: {fp32_diff}"

    model = prepare_qat(fp32)
    torch.manual_seed(SEED)
    train(model, x_train, y_train, QAT_EPOCHS, QAT_LR)
    model.apply(tq.disable_observer)  # freeze the scales; train() left the model in eval mode
    with torch.no_grad():
        expected = model(torch.from_numpy(x_eval)).numpy()

    with warnings.catch_warnings():  # FakeQuantize's `if observer_enabled[0] == 1` is traced as a constant
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (torch.from_numpy(x_eval[:4]),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    layout = qdq_layout(proto)
    assert layout == {"quantize_linear": 14, "dequantize_linear": 14, "float_weights_behind_qdq": 6,
                      "activation_qdq_pairs": 8}, layout

    # onnxruntime without graph optimisations runs the Q/DQ as written, in float: it matches torch but for
    # the odd value on a rounding boundary (accumulation order differs), which moves by one quantum.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"image": x_eval})[0]
    diff = np.abs(expected - got)
    out_scale = float(model.head.activation_post_process.scale)
    print(f"qat: fp32 torch vs onnx {fp32_diff:.2e}; qat torch vs onnxruntime max {diff.max():.4f} "  # noqa: T201
          f"(logit quantum {out_scale:.4f}), {int((diff > 1e-4).sum())} of {diff.size} logits differ")
    assert diff.max() <= 2.01 * out_scale and (diff > 1e-4).mean() < 0.01, "onnxruntime disagrees with torch"
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()

    top1, fp32_top1 = accuracy(path, x_eval, y_eval), accuracy(fp32_path, x_eval, y_eval)  # default: QLinearConv
    assert abs(top1 - fp32_top1) <= 0.01, (top1, fp32_top1)
    report = json.loads((HERE / "build_report.json").read_text())
    report["digits_cnn_qat"] = {
        "top1": round(top1, 4), "top1_fp32": round(fp32_top1, 4),
        "top1_torch_fake_quant": round(float((expected.argmax(axis=1) == y_eval).mean()), 4),
        "qat_epochs": QAT_EPOCHS, "qat_lr": QAT_LR, **layout,
        "max_abs_diff_torch": round(float(diff.max()), 6), "logits_differing": int((diff > 1e-4).sum()),
        "bytes": path.stat().st_size,
    }
    print("digits_cnn_qat", report["digits_cnn_qat"])  # noqa: T201
    (HERE / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# tiny_llm: a llama-like decoder on the Python documentation, in onnxruntime-genai's layout.

LLM_DIR = HERE / "tiny_llm"
EOT = "<|endoftext|>"  # bos = eos = pad, id 0
VOCAB = 512
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_SIZE, INTERMEDIATE = 128, 3, 4, 2, 32, 256
CONTEXT = 512
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
CHUNK_CHARS = 1600  # the corpus is cut into paragraph-aligned chunks of about this size ...
SPLIT_PERIOD = 32   # ... and chunk i goes to eval if i % 32 == 11, to calib if i % 32 == 27
TRAIN_WINDOW, BATCH, STEPS, LLM_LR = 256, 16, 300, 4e-3
EVAL_WINDOW = 256


def load_corpus() -> tuple[list[str], str, str]:
    """`pydoc_data.topics` (sorted by key) cut into paragraph-aligned chunks: train topics, calib, eval."""
    from pydoc_data import topics

    train: list[str] = []
    calib: list[str] = []
    evals: list[str] = []
    index = 0
    for key in sorted(topics.topics):
        kept: list[str] = []  # this topic's training chunks, rejoined into one document
        current: list[str] = []
        paragraphs = topics.topics[key].strip().split("\n\n")
        for n, paragraph in enumerate(paragraphs):
            current.append(paragraph)
            if sum(len(p) + 2 for p in current) >= CHUNK_CHARS or n == len(paragraphs) - 1:
                chunk = "\n\n".join(current)
                current = []
                slot = index % SPLIT_PERIOD
                (evals if slot == 11 else calib if slot == 27 else kept).append(chunk)
                index += 1
        if kept:
            train.append("\n\n".join(kept))
    return train, "\n\n".join(calib) + "\n", "\n\n".join(evals) + "\n"


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE (GPT-2 style, no prefix space), vocabulary 512 including <|endoftext|> = 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert tokenizer.get_vocab_size() == VOCAB and tokenizer.token_to_id(EOT) == 0
    return tokenizer


def write_tokenizer_files(tokenizer: Tokenizer) -> None:
    tokenizer.save(str(LLM_DIR / "tokenizer.json"))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": CONTEXT, "add_bos_token": False,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, **special,
              "added_tokens_decoder": {"0": {"content": EOT, "lstrip": False, "normalized": False,
                                             "rstrip": False, "single_word": False, "special": True}}}
    (LLM_DIR / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (LLM_DIR / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


class Linear(nn.Module):
    """Bias-free linear layer stored as W[in, out], so that it exports as MatMul(x, W)."""

    def __init__(self, fan_in: int, fan_out: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_in, fan_out) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GQAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        out_std = 0.02 / (2 * LAYERS) ** 0.5
        self.q_proj = Linear(HIDDEN, HEADS * HEAD_SIZE)
        self.k_proj = Linear(HIDDEN, KV_HEADS * HEAD_SIZE)
        self.v_proj = Linear(HIDDEN, KV_HEADS * HEAD_SIZE)
        self.o_proj = Linear(HEADS * HEAD_SIZE, HIDDEN, out_std)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, s, _ = x.shape
        groups = HEADS // KV_HEADS
        q = self.q_proj(x).reshape(b, s, HEADS, HEAD_SIZE).transpose(1, 2)
        k = self.k_proj(x).reshape(b, s, KV_HEADS, HEAD_SIZE).transpose(1, 2)
        v = self.v_proj(x).reshape(b, s, KV_HEADS, HEAD_SIZE).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        key = torch.cat((past_key, k), dim=2)  # [b, kv_heads, total, head_size]
        value = torch.cat((past_value, v), dim=2)
        # query head h reads kv head h // groups: [b, kv, groups, s, hs] against [b, kv, 1, total, hs]
        q = q.reshape(b, KV_HEADS, groups, s, HEAD_SIZE) * HEAD_SIZE**-0.5
        scores = q @ key.unsqueeze(2).transpose(-2, -1) + bias
        out = torch.softmax(scores, dim=-1) @ value.unsqueeze(2)
        out = out.reshape(b, HEADS, s, HEAD_SIZE).transpose(1, 2).reshape(b, s, HEADS * HEAD_SIZE)
        return self.o_proj(out), key, value


class SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = Linear(HIDDEN, INTERMEDIATE)
        self.up_proj = Linear(HIDDEN, INTERMEDIATE)
        self.down_proj = Linear(INTERMEDIATE, HIDDEN, 0.02 / (2 * LAYERS) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN)
        self.attn = GQAttention()
        self.post_attention_layernorm = RMSNorm(HIDDEN)
        self.mlp = SwiGLU()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        attn, key, value = self.attn(self.input_layernorm(x), cos, sin, bias, past_key, past_value)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), key, value


class RotaryEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        inv_freq = ROPE_THETA ** (-torch.arange(0, HEAD_SIZE, 2, dtype=torch.float32) / HEAD_SIZE)
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.unsqueeze(-1).float() * self.inv_freq  # [b, s, head_size / 2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [b, 1, s, head_size]
        return emb.cos(), emb.sin()


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm. Positions are the running count of attended tokens
    in attention_mask, so an empty past, a KV cache and left padding all work."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.rotary_emb = RotaryEmbedding()
        self.layers = nn.ModuleList([DecoderLayer() for _ in range(LAYERS)])
        self.norm = RMSNorm(HIDDEN)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = input_ids.shape[1]
        total = attention_mask.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, total - s :]
        cos, sin = self.rotary_emb(positions)
        query_pos = torch.arange(s) + (total - s)
        causal = torch.arange(total).unsqueeze(0) <= query_pos.unsqueeze(1)
        allowed = causal & attention_mask.bool()[:, None, None, None, :]  # [b, 1, 1, s, total]
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, -1e9)
        x = self.embed_tokens(input_ids)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x, key, value = layer(x, cos, sin, bias, past[2 * i], past[2 * i + 1])
            presents += [key, value]
        return self.norm(x), presents


class TinyLlama(nn.Module):
    """onnxruntime-genai's signature: (input_ids, attention_mask, past k0, v0, k1, v1, ...) ->
    (logits, present k0, v0, ...); called without a past (training) the cache starts empty."""

    def __init__(self) -> None:
        super().__init__()
        self.model = DecoderModel()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not past:
            past = (torch.zeros(input_ids.shape[0], KV_HEADS, 0, HEAD_SIZE),) * (2 * LAYERS)
        hidden, presents = self.model(input_ids, attention_mask, past)
        logits = hidden @ self.model.embed_tokens.weight.t()  # lm_head, tied to the embedding
        return (logits, *presents)


def token_windows(ids: list[int], window: int) -> np.ndarray:
    """Non-overlapping windows of `window` tokens (the ragged tail is dropped)."""
    count = len(ids) // window
    return np.asarray(ids[: count * window], dtype=np.int64).reshape(count, window)


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1], torch.ones_like(batch[:, :-1]))[0]
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def train_llm(model: nn.Module, stream: np.ndarray, eval_windows: np.ndarray) -> dict[str, float]:
    """AdamW with warm-up and cosine decay on random windows of the training token stream."""
    generator = torch.Generator().manual_seed(SEED)
    data = torch.from_numpy(stream)
    decay = [p for p in model.parameters() if p.ndim == 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=LLM_LR, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LLM_LR, total_steps=STEPS, pct_start=0.05,
                                                anneal_strategy="cos", final_div_factor=20.0)
    start = time.perf_counter()
    model.train()
    losses = []
    for step in range(STEPS):
        offsets = torch.randint(0, len(data) - TRAIN_WINDOW - 1, (BATCH,), generator=generator)
        batch = torch.stack([data[o : o + TRAIN_WINDOW + 1] for o in offsets.tolist()])
        loss = lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == STEPS - 1:
            print(f"  step {step:4d}  train loss {np.mean(losses[-50:]):.3f}")  # noqa: T201
    model.eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_windows = token_windows(stream.tolist(), EVAL_WINDOW)[::8]
        train_loss = float(np.mean([lm_loss(model, torch.from_numpy(w)).item()
                                    for w in np.array_split(train_windows, 8)]))
        eval_loss = float(lm_loss(model, torch.from_numpy(eval_windows)))
    print(f"  trained {STEPS} steps in {seconds:.0f} s")  # noqa: T201
    return {"train_loss": round(train_loss, 4),
            "train_perplexity": round(float(np.exp(train_loss)), 3), "eval_loss_torch": round(eval_loss, 4),
            "eval_perplexity_torch": round(float(np.exp(eval_loss)), 3)}


def past_names() -> tuple[list[str], list[str]]:
    inputs = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    return inputs, [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]


def export_llm(model: nn.Module, path: Path) -> None:
    """TorchScript export, then meaningful node names and the tied lm_head as `lm_head.weight`."""
    past_in, present_out = past_names()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    past = [torch.zeros(2, KV_HEADS, 3, HEAD_SIZE)] * len(past_in)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                                       "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                                       "logits": {0: "batch_size", 1: "sequence_length"}}
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_in})
    axes.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in present_out})
    torch.onnx.export(model, (ids, torch.ones(2, 8, dtype=torch.int64), *past), str(path),
                      input_names=["input_ids", "attention_mask", *past_in],
                      output_names=["logits", *present_out], dynamic_axes=axes, opset_version=OPSET,
                      dynamo=False)
    proto = onnx.load(str(path))
    graph = proto.graph
    for node in graph.node:  # "/model/layers.0/attn/q_proj/MatMul" -> "model.layers.0.attn.q_proj.MatMul"
        node.name = node.name.lstrip("/").replace("/", ".")
    # The tied head comes out as MatMul(x, W_embed^T) with the transpose folded into a new initializer.
    head = next(n for n in graph.node if n.output[0] == "logits")
    assert head.op_type == "MatMul", head.op_type
    head.name = "lm_head.MatMul"
    old = head.input[1]
    init = next(t for t in graph.initializer if t.name == old)
    init.name = "lm_head.weight"
    for node in graph.node:
        node.input[:] = ["lm_head.weight" if n == old else n for n in node.input]
    onnx.save(proto, str(path))


def run_onnx(session: ort.InferenceSession, ids: np.ndarray, past: list[np.ndarray] | None = None,
             attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """One decoder call; an absent past is an empty cache (past_sequence_length 0)."""
    past_in, _ = past_names()
    if past is None:
        past = [np.zeros((ids.shape[0], KV_HEADS, 0, HEAD_SIZE), np.float32)] * len(past_in)
    if attention_mask is None:
        attention_mask = np.ones((ids.shape[0], past[0].shape[2] + ids.shape[1]), np.int64)
    feeds = {"input_ids": ids, "attention_mask": attention_mask, **dict(zip(past_in, past, strict=True))}
    outputs = session.run(None, feeds)
    return outputs[0], outputs[1:]


def onnx_perplexity(session: ort.InferenceSession, windows: np.ndarray) -> float:
    """exp(mean next-token NLL) over non-overlapping windows (each window predicts its tokens 2..n)."""
    nll = []
    for window in windows:
        logits = run_onnx(session, window[None])[0][0, :-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll.append(-logp[np.arange(len(window) - 1), window[1:]])
    return float(np.exp(np.concatenate(nll).mean()))


def check_llm(model: nn.Module, path: Path, eval_windows: np.ndarray) -> dict[str, float]:
    """ONNX agrees with torch, the KV cache agrees with one full call, and the ONNX perplexity."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    weights = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:  # every weight is read directly; the linear layers are MatMul(x, W[K, N])
        assert node.op_type != "Identity" or node.input[0] not in weights, node.name
        assert node.op_type != "Gemm" and (node.op_type != "Transpose" or node.input[0] not in weights), node.name
        if node.op_type == "MatMul" and node.input[1] in weights:
            assert node.name.endswith("proj.MatMul") or node.name == "lm_head.MatMul", node.name
    assert sum(n.op_type == "MatMul" and n.input[1] in weights for n in proto.graph.node) == 7 * LAYERS + 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    window = eval_windows[:2]
    with torch.no_grad():
        expected = model(torch.from_numpy(window), torch.ones_like(torch.from_numpy(window)))[0].numpy()
    got = run_onnx(session, window)[0]
    torch_diff = float(np.abs(expected - got).max())
    assert torch_diff < 1e-4, f"onnxruntime disagrees with torch: {torch_diff}"
    # 64 tokens at once == 40 tokens, then 24 single-token steps feeding present -> past
    ids = eval_windows[2:4, :64]
    full = run_onnx(session, ids)[0]
    logits, past = run_onnx(session, ids[:, :40])
    steps = [logits]
    for t in range(40, 64):
        logits, past = run_onnx(session, ids[:, t : t + 1], past)
        steps.append(logits)
    assert past[0].shape == (2, KV_HEADS, 64, HEAD_SIZE)
    cache_diff = float(np.abs(full - np.concatenate(steps, axis=1)).max())
    assert cache_diff < 1e-4, f"KV-cache decoding disagrees with one call: {cache_diff}"
    # left padding: a padded row gives the same logits as the same tokens alone
    padded = np.concatenate([np.zeros((1, 8), np.int64), ids[:1, :56]], axis=1)
    mask = np.concatenate([np.zeros((1, 8), np.int64), np.ones((1, 56), np.int64)], axis=1)
    pad_diff = float(np.abs(run_onnx(session, padded, attention_mask=mask)[0][0, 8:] - full[0, :56]).max())
    assert pad_diff < 1e-4, f"left padding changes the logits: {pad_diff}"
    return {"max_abs_diff_torch": torch_diff, "max_abs_diff_kv_cache": cache_diff,
            "max_abs_diff_left_padding": pad_diff,
            "eval_perplexity_onnx": round(onnx_perplexity(session, eval_windows), 3)}


def write_genai_config() -> None:
    past_in, present_out = past_names()
    config = {
        "model": {
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "context_length": CONTEXT,
            "type": "llama", "vocab_size": VOCAB,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": HEAD_SIZE, "hidden_size": HIDDEN,
                "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": CONTEXT, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    assert past_in[0] == config["model"]["decoder"]["inputs"]["past_key_names"] % 0
    assert present_out[1] == config["model"]["decoder"]["outputs"]["present_value_names"] % 0
    (LLM_DIR / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_tiny_llm() -> None:
    seed_everything()
    torch.utils.deterministic.fill_uninitialized_memory = False  # ~8 % of training time, not needed here
    LLM_DIR.mkdir(exist_ok=True)
    train_docs, calib_text, eval_text = load_corpus()
    (LLM_DIR / "calib.txt").write_text(calib_text, encoding="utf-8")
    (LLM_DIR / "eval.txt").write_text(eval_text, encoding="utf-8")
    tokenizer = train_tokenizer(train_docs)
    write_tokenizer_files(tokenizer)
    stream = np.asarray([t for doc in train_docs for t in [*tokenizer.encode(doc).ids, 0]], dtype=np.int64)
    eval_windows = token_windows(tokenizer.encode(eval_text).ids, EVAL_WINDOW)
    calib_windows = token_windows(tokenizer.encode(calib_text).ids, EVAL_WINDOW)
    assert len(eval_windows) >= 8 and len(calib_windows) >= 8
    torch.manual_seed(SEED)
    model = TinyLlama()
    report: dict[str, object] = {"corpus": f"pydoc_data.topics of Python {platform.python_version()}",
                                 "parameters": sum(p.numel() for p in model.parameters()),
                                 "train_tokens": len(stream), "eval_windows": len(eval_windows),
                                 "calib_windows": len(calib_windows)}
    report.update(train_llm(model, stream, eval_windows))
    path = LLM_DIR / "model.onnx"
    export_llm(model, path)
    report.update(check_llm(model, path, eval_windows))
    write_genai_config()
    report["bytes"] = path.stat().st_size
    print("tiny_llm", report)  # noqa: T201
    (LLM_DIR / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "qat", "tiny_llm"], help="build only this part")
    only = parser.parse_args().only
    if only in (None, "digits"):
        build_digits()
    if only in (None, "qat"):
        build_qat()
    if only in (None, "tiny_llm"):
        build_tiny_llm()


if __name__ == "__main__":
    main()
