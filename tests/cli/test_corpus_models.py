"""The bad-model corpus: broken, hostile or absurd model files, each refused by the real CLI with
exit 2, one `error:` line naming what is wrong, nothing on stdout and every file left as it was.

Each case builds its files in `tmp_path/model` (anything "outside the model folder" goes to
`tmp_path/outside`) and names the command it runs: inspect, quantize, validate or benchmark, the
bad model first (checked by the command) or second (checked by the library before onnxruntime
sees it). Everything runs as root here, so no case relies on file permissions.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from qconvert.quantization.adapter import reads_calibration_cache as _reads_calibration_cache
from tests import models
from tests.corpus import refused

runner = CliRunner()
Builder = Callable[[Path], Path]  # the model folder -> the model file to hand the command


def _write(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _raw(data: bytes) -> Builder:
    def build(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "m.onnx").write_bytes(data)
        return folder / "m.onnx"
    return build


def _edited(edit: Callable[[onnx.ModelProto], object], base: Callable[[], onnx.ModelProto] = models.mlp) -> Builder:
    """A model from `base` changed in memory by `edit`, written without any check."""
    def build(folder: Path) -> Path:
        model = base()
        edit(model)
        return _write(model, folder)
    return build


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set_weight(name: str, values: dict[tuple[int, ...], float], base: Callable[[], onnx.ModelProto] = models.mlp
                ) -> Builder:
    def edit(model: onnx.ModelProto) -> None:
        tensor = _init(model, name)
        array = numpy_helper.to_array(tensor).copy()
        for index, value in values.items():
            array[index] = value
        tensor.CopyFrom(numpy_helper.from_array(array, name))
    return _edited(edit, base)


def _truncated(folder: Path) -> Path:
    data = models.conv_mlp().SerializeToString()
    return _raw(data[: len(data) // 2])(folder)


def _random_bytes(folder: Path) -> Path:
    return _raw(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())(folder)


def _tensor_file(folder: Path) -> Path:
    return _raw(numpy_helper.from_array(np.ones((4, 4), np.float32), "w").SerializeToString())(folder)


def _graph_file(folder: Path) -> Path:
    return _raw(models.mlp().graph.SerializeToString())(folder)


def _no_nodes(model: onnx.ModelProto) -> None:
    del model.graph.node[:]


def _set_opset(version: int, domain: str = "") -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.opset_import.append(helper.make_opsetid(domain, version)) if domain else None
        for entry in model.opset_import:
            if entry.domain == domain:
                entry.version = version
    return edit


def _ir(version: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.ir_version = version
    return edit


def _custom_op(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("com.example.customops", 1))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example.customops"


def _op(op_type: str, domain: str = "") -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.op_type, relu.domain = op_type, domain
    return edit


def _huge_initializer(model: onnx.ModelProto) -> None:
    tensor = _init(model, "w1")
    del tensor.dims[:]
    tensor.dims.extend([40_000, 1_000_000])  # 160 GB of float32 in a few hundred bytes
    tensor.raw_data = b"\0" * 16


def _dims(name: str, dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        tensor = _init(model, name)
        del tensor.dims[:]
        tensor.dims.extend(dims)
    return edit


def _typed_short(model: onnx.ModelProto) -> None:
    tensor = _init(model, "w1")
    values = numpy_helper.to_array(tensor).ravel()[:-3]
    tensor.ClearField("raw_data")
    tensor.float_data.extend(values.tolist())


def _no_data(model: onnx.ModelProto) -> None:
    _init(model, "w1").ClearField("raw_data")


def _input_dim(value: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = value
    return edit


def _fp16_nan(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.array([1.0, np.nan], np.float16), "half"))


def _constant_nan() -> onnx.ModelProto:
    model = models.constant_weights()
    node = next(n for n in model.graph.node if n.name == "const_w2")
    array = numpy_helper.to_array(node.attribute[0].t).copy()
    array[0, 0] = np.nan
    node.attribute[0].t.CopyFrom(numpy_helper.from_array(array))
    return model


def _branch_nan() -> onnx.ModelProto:
    model = models.with_if_subgraph()
    branch = next(n for n in model.graph.node if n.op_type == "If")
    then = next(a for a in branch.attribute if a.name == "then_branch").g
    then.initializer.append(numpy_helper.from_array(np.array([np.nan, 1.0], np.float32), "then_bias"))
    return model


def _external(edit: Callable[[onnx.TensorProto, Path], object] | None = None, tensor: str = "w1") -> Builder:
    def build(folder: Path) -> Path:
        path = models.externalize(models.mlp(), folder)
        if edit is not None:
            model = onnx.load(str(path), load_external_data=False)
            edit(_init(model, tensor), folder)
            path.write_bytes(model.SerializeToString())
        return path
    return build


def _entry(key: str, value: str | None) -> Callable[[onnx.TensorProto, Path], None]:
    """Set (or with None, drop) one external_data entry."""
    def edit(tensor: onnx.TensorProto, folder: Path) -> None:
        entries = [(e.key, e.value) for e in tensor.external_data if e.key != key]
        if value is not None:
            entries.append((key, value))
        del tensor.external_data[:]
        for k, v in entries:
            e = tensor.external_data.add()
            e.key, e.value = k, v
    return edit


def _outside(folder: Path) -> Path:
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    return outside


def _sidecar_moved_out(how: str) -> Callable[[onnx.TensorProto, Path], None]:
    """Replace the sidecar (or its folder) by a link, a FIFO, a device or a directory."""
    def edit(tensor: onnx.TensorProto, folder: Path) -> None:
        sidecar = folder / "m.onnx.data"
        if how == "symlink":
            target = _outside(folder) / "stolen.data"
            sidecar.rename(target)
            sidecar.symlink_to(target)
        elif how == "hardlink":
            target = _outside(folder) / "stolen.data"
            os.link(sidecar, target)
        elif how == "fifo":
            sidecar.unlink()
            os.mkfifo(sidecar)
        elif how == "devzero":
            sidecar.unlink()
            sidecar.symlink_to("/dev/zero")
        elif how == "device":
            sidecar.unlink()
            try:
                os.mknod(sidecar, stat.S_IFCHR | 0o600, os.makedev(1, 5))
            except OSError:
                pytest.skip("cannot create a device node here")
        elif how == "directory":
            sidecar.unlink()
            sidecar.mkdir()
        elif how == "loop":
            sidecar.unlink()
            sidecar.symlink_to("m.onnx.data")
        elif how == "dirlink":
            real = _outside(folder) / "weights"
            real.mkdir()
            sidecar.rename(real / "m.onnx.data")
            (folder / "weights").symlink_to(real)
            _entry("location", "weights/m.onnx.data")(tensor, folder)
    return edit


def _with_raw(tensor: onnx.TensorProto, folder: Path) -> None:
    tensor.raw_data = b"\0" * 4


def _both_locations(tensor: onnx.TensorProto, folder: Path) -> None:
    e = tensor.external_data.add()
    e.key, e.value = "location", "other.data"


def _constant_escapes() -> Builder:
    def build(folder: Path) -> Path:
        model = models.constant_weights()
        node = next(n for n in model.graph.node if n.name == "const_w1")
        t = node.attribute[0].t
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "../outside/w.data"), ("offset", "0"), ("length", str(16 * 32 * 4))):
            e = t.external_data.add()
            e.key, e.value = key, value
        (_outside(folder) / "w.data").write_bytes(b"\0" * (16 * 32 * 4))
        return _write(model, folder)
    return build


def _model_fifo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    os.mkfifo(folder / "m.onnx")
    return folder / "m.onnx"


def _model_devzero(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "m.onnx").symlink_to("/dev/zero")
    return folder / "m.onnx"


def _model_folder(folder: Path) -> Path:
    (folder / "m.onnx").mkdir(parents=True)
    return folder / "m.onnx"


EMPTY_LOC = "is empty"
CASES: list[tuple[str, Builder, str, str]] = [  # id, builder, command, message
    ("empty-file", _raw(b""), "inspect", "model file is empty"),
    ("random-bytes", _random_bytes, "quantize", "not a valid ONNX model"),
    ("truncated", _truncated, "validate", "not a valid ONNX model"),
    ("tensor-proto", _tensor_file, "benchmark", "not a valid ONNX model"),
    ("graph-proto", _graph_file, "inspect", "not a valid ONNX model (no graph)"),
    ("no-nodes", _edited(_no_nodes), "validate2", "its graph has no nodes"),
    ("model-is-fifo", _model_fifo, "inspect", "not a regular file"),
    ("model-is-dev-zero", _model_devzero, "benchmark2", "not a regular file"),
    ("model-is-folder", _model_folder, "quantize", "model is not a file"),
    ("ir-99", _edited(_ir(99)), "inspect", "IR version 99 is newer"),
    ("ir-0", _edited(_ir(0)), "benchmark", "has no IR version"),
    ("opset-99", _edited(_set_opset(99)), "quantize", "opset 99 of domain 'ai.onnx' is newer"),
    ("opset-0", _edited(_set_opset(0)), "validate2", "opset 0 of domain 'ai.onnx' is not a valid"),
    ("ml-opset-99", _edited(_set_opset(99, "ai.onnx.ml")), "inspect", "opset 99 of domain 'ai.onnx.ml'"),
    ("custom-domain", _edited(_custom_op), "quantize", "needs a custom-op library"),
    ("unknown-op", _edited(_op("Frobnicate")), "benchmark2", "'Frobnicate', unknown in domain 'ai.onnx' at opset 17"),
    ("op-newer-than-opset", _edited(_op("Gelu")), "inspect", "'Gelu', unknown in domain"),
    ("domain-not-imported", _edited(_op("FastGelu", "com.microsoft")), "validate", "does not import"),
    ("initializer-160gb", _edited(_huge_initializer), "inspect",
     "initializer 'w1' holds 16 bytes but its shape [40000, 1000000] needs 160000000000"),
    ("initializer-4tib", _edited(_dims("w1", [2**20, 2**20])), "benchmark", "initializer 'w1' claims 4.0 TiB"),
    ("negative-dim", _edited(_dims("w1", [-16, 32])), "quantize", "initializer 'w1' has a negative dimension"),
    ("raw-size-mismatch", _edited(_dims("w1", [16, 31])), "benchmark", "initializer 'w1' holds 2048 bytes"),
    ("typed-count-mismatch", _edited(_typed_short), "validate2", "initializer 'w1' stores 509 value(s)"),
    ("no-data", _edited(_no_data), "inspect", "initializer 'w1' stores 0 value(s)"),
    ("input-dim-2**40", _edited(_input_dim(2**40)), "quantize", "input 'x' declares dimension 1099511627776"),
    ("nan-weight", _set_weight("w1", {(0, 0): np.nan, (1, 1): np.nan, (2, 2): np.nan}), "inspect",
     "initializer 'w1' holds 3 NaN value(s)"),
    ("inf-matmul-weight", _set_weight("w2", {(0, 0): np.inf, (3, 1): -np.inf}), "quantize",
     "initializer 'w2', a weight of a quantizable node, holds 2 infinite value(s)"),
    ("inf-conv-weight", _set_weight("w1", {(0, 0, 0, 0): np.inf}, models.conv_mlp), "benchmark",
     "initializer 'w1', a weight of a quantizable node, holds 1 infinite"),
    ("nan-constant-node", _edited(lambda m: None, _constant_nan), "quantize",
     "Constant node 'const_w2' value holds 1 NaN value(s)"),
    # external data
    ("ext-absolute", _external(_entry("location", "/etc/passwd")), "inspect", "is an absolute path"),
    ("ext-dotdot", _external(_entry("location", "../outside/m.onnx.data")), "quantize", "through '..'"),
    ("ext-dotdot-inner", _external(_entry("location", "sub/../../x.data")), "benchmark", "through '..'"),
    ("ext-empty-location", _external(_entry("location", "")), "validate2", EMPTY_LOC),
    ("ext-ort-memory", _external(_entry("location", "*/_ORT_MEM_ADDR_/*")), "inspect", "in-memory marker"),
    ("ext-no-location", _external(_entry("location", None)), "quantize", "has no location"),
    ("ext-two-locations", _external(_both_locations), "benchmark2", "names its external 'location' twice"),
    ("ext-missing", _external(_entry("location", "gone.data")), "validate", "'gone.data' of tensor 'w1' is missing"),
    ("ext-symlink-out", _external(_sidecar_moved_out("symlink")), "inspect", "is outside the model folder"),
    ("ext-dir-symlink-out", _external(_sidecar_moved_out("dirlink")), "quantize", "is outside the model folder"),
    ("ext-hardlink", _external(_sidecar_moved_out("hardlink")), "benchmark", "has 2 hard links"),
    ("ext-fifo", _external(_sidecar_moved_out("fifo")), "validate2", "is a FIFO"),
    ("ext-dev-zero-symlink", _external(_sidecar_moved_out("devzero")), "inspect", "is outside the model folder"),
    ("ext-device-node", _external(_sidecar_moved_out("device")), "benchmark2", "is a device"),
    ("ext-directory", _external(_sidecar_moved_out("directory")), "quantize", "is a folder, not a file"),
    ("ext-symlink-loop", _external(_sidecar_moved_out("loop")), "inspect", "cannot be resolved"),
    ("ext-offset-past-end", _external(_entry("offset", "999999")), "validate", "past the end"),
    ("ext-length-past-end", _external(_entry("length", "999999")), "benchmark", "past the end"),
    ("ext-length-not-shape", _external(_entry("length", "1000")), "inspect", "has 1000 bytes of external data but"),
    ("ext-no-length-not-shape", _external(_entry("length", None)), "quantize", "bytes of external data but"),
    ("ext-negative-offset", _external(_entry("offset", "-4")), "validate2", "offset '-4', not a non-negative"),
    ("ext-float-offset", _external(_entry("offset", "1.5")), "inspect", "offset '1.5', not a non-negative"),
    ("ext-hex-length", _external(_entry("length", "0x800")), "benchmark2", "length '0x800', not a non-negative"),
    ("ext-location-is-the-folder", _external(_entry("location", ".")), "validate", "is the model folder itself"),
    ("ext-raw-and-external", _external(_with_raw), "inspect", "both raw data and an external reference"),
    ("ext-constant-escapes", _constant_escapes(), "quantize", "through '..'"),
]


def _command(kind: str, model: Path, tmp: Path) -> list[str | Path]:
    good = models.save(models.mlp(), tmp / "good.onnx")
    return {
        "inspect": ["inspect", model],
        "quantize": ["quantize", model, "-o", tmp / "out.onnx"],
        "validate": ["validate", model, good, "--data", "synthetic"],
        "validate2": ["validate", good, model, "--data", "synthetic"],  # the library checks the second
        "benchmark": ["benchmark", model, "--runs", "1", "--warmup", "0"],
        "benchmark2": ["benchmark", good, model, "--runs", "1", "--warmup", "0"],
    }[kind]


@pytest.mark.parametrize(("build", "kind", "message"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_model_is_refused(tmp_path: Path, build: Builder, kind: str, message: str) -> None:
    model = build(tmp_path / "model")
    args = _command(kind, model, tmp_path)
    err = refused(args, folder=tmp_path, code=ExitCode.BAD_INPUT, message=message)
    assert "hint:" in err


def test_the_corpus_is_big_and_mixes_commands() -> None:
    assert len(CASES) >= 35
    assert {kind.rstrip("2") for _, _, kind, _ in CASES} == {"inspect", "quantize", "validate", "benchmark"}


# ----- what must still work


def _ok(args: list[str | Path]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_minus_inf_mask_constants_still_load(tmp_path: Path) -> None:
    path = models.save(models.masked_scores(), tmp_path / "masked.onnx")
    _ok(["inspect", path])
    _ok(["quantize", path, "-o", tmp_path / "q.onnx", "--mode", "dynamic"])
    _ok(["benchmark", path, tmp_path / "q.onnx", "--runs", "2", "--warmup", "0"])
    if not _reads_calibration_cache():  # onnxruntime 1.24 calibrates by itself: an infinite scale, refused
        return
    # Static, every op: the masked scores are ranged over their finite values, and said so.
    result = runner.invoke(app, ["quantize", str(path), "-o", str(tmp_path / "s.onnx"), "--calib", "synthetic",
                                 "--op-types", "MatMul,Add,Softmax", "--json"])
    assert result.exit_code == 0, result.stderr
    assert any("hold ±Inf" in w for w in json.loads(result.stdout)["warnings"])
    _ok(["validate", path, tmp_path / "s.onnx", "--data", "synthetic", "--min-cosine", "0.95"])


def test_nan_fills_that_no_quantizable_node_scales_by_still_load(tmp_path: Path) -> None:
    """NaN in an unused fp16 initializer and in an If branch's bias: exports carry such fills, and
    onnxruntime runs them; only a weight of a quantizable node must be finite."""
    for name, model in (("fp16", models.mlp()), ("branch", _branch_nan())):
        if name == "fp16":
            _fp16_nan(model)
        path = models.save(model, tmp_path / f"{name}.onnx")
        _ok(["inspect", path])
        _ok(["quantize", path, "-o", tmp_path / f"{name}.q.onnx", "--mode", "dynamic"])


def test_external_data_inside_the_folder_still_works(tmp_path: Path) -> None:
    path = models.externalize(models.mlp(), tmp_path / "model")
    _ok(["inspect", path])
    _ok(["quantize", path, "-o", tmp_path / "q.onnx", "--calib", "synthetic"])
    _ok(["validate", path, tmp_path / "q.onnx", "--data", "synthetic"])
    _ok(["benchmark", path, "--runs", "2", "--warmup", "0"])


def test_links_that_stay_inside_the_folder_are_fine(tmp_path: Path) -> None:
    """A sidecar in a subfolder, reached through a symlink inside the folder, in a folder that is
    itself reached through a symlink."""
    real = tmp_path / "real"
    (real / "weights").mkdir(parents=True)
    path = models.externalize(models.mlp(), real, sidecar="weights/m.data")
    (real / "alias").symlink_to("weights")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "alias/m.data"
    path.write_bytes(model.SerializeToString())
    (tmp_path / "link").symlink_to(real)
    _ok(["inspect", tmp_path / "link" / "m.onnx"])
    _ok(["benchmark", tmp_path / "link" / "m.onnx", "--runs", "1", "--warmup", "0"])
