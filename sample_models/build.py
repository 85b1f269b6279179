"""Regenerate the sample models and their data, reproducibly.

Trains a CNN and a small ViT-style transformer encoder on scikit-learn's digits (bundled with
scikit-learn, no network), exports both to ONNX, and writes calibration and evaluation data.
Heavy enough in compute (tens of MFLOPs per inference) that int8 shows its real speedup, small
enough in weights to ship in the repository.

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python sample_models/build.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
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


def main() -> None:
    seed_everything()
    x_train, y_train, x_eval, y_eval, x_calib, norm = load_data()
    np.savez_compressed(HERE / "digits.calib.npz", image=x_calib)
    np.savez_compressed(HERE / "digits.eval.npz", image=x_eval, labels=y_eval)
    report: dict[str, object] = {"normalisation": norm}
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


if __name__ == "__main__":
    main()
