"""Loading, describing and saving ONNX models: external data, >2 GB models, atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ModelError, OutputError

if TYPE_CHECKING:
    import onnx

# Protobuf cannot serialize a message of 2 GiB or more; past this, weights go to a sidecar file.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and dims (ints, symbolic names, or None)."""

    name: str
    dtype: np.dtype[np.generic]
    dims: tuple[int | str | None, ...] | None  # None when the rank is unknown

    @property
    def is_static(self) -> bool:
        return self.dims is not None and all(isinstance(d, int) for d in self.dims)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": str(self.dtype),
                "shape": None if self.dims is None else list(self.dims)}


@dataclass
class LoadedModel:
    """A model in memory with where it came from."""

    proto: onnx.ModelProto
    path: Path
    uses_external_data: bool
    file_bytes: int  # the .onnx file plus its external-data files


@dataclass(frozen=True)
class GraphNode:
    """A node with the path of the (sub)graph it lives in: '' for the main graph, else e.g. 'if/then_branch'."""

    node: onnx.NodeProto
    graph_path: str

    @property
    def in_subgraph(self) -> bool:
        return bool(self.graph_path)


def _external_files(model: onnx.ModelProto) -> set[str]:
    import onnx.external_data_helper as edh

    files = set()
    for tensor in edh._get_all_tensors(model):
        if edh.uses_external_data(tensor):
            info = edh.ExternalDataInfo(tensor)
            files.add(info.location)
    return files


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model with its external data, refusing anything that is not a usable ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise ModelError(f"model not found: {p}", hint="check the path")
    if not p.is_file():
        raise ModelError(f"model is not a file: {p}", hint="pass the .onnx file, not a folder")
    size = p.stat().st_size
    if size == 0:
        raise ModelError(f"model file is empty: {p}", hint="the file was truncated or never written")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"not a valid ONNX model: {p} ({exc})",
                         hint="the file is corrupt or not an ONNX ModelProto") from exc
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(f"not a valid ONNX model: {p} (no graph or no opset import)",
                         hint="the file is corrupt or not an ONNX ModelProto")
    files = _external_files(proto)
    base = p.resolve().parent
    for name in sorted(files):
        target = (base / name).resolve()
        if base not in target.parents or not target.is_file():
            raise ModelError(f"external data file {name!r} of {p} is missing or outside the model folder",
                             hint="keep the model's .data files next to it")
        size += target.stat().st_size
    if files:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read external data of {p}: {exc}",
                             hint="the .data file is truncated or does not belong to this model") from exc
    return LoadedModel(proto=proto, path=p, uses_external_data=bool(files), file_bytes=size)


def iter_nodes(graph: onnx.GraphProto, graph_path: str = "") -> Iterator[GraphNode]:
    """Every node of a graph, then recursively of the If/Loop/Scan bodies it holds."""
    import onnx

    for node in graph.node:
        yield GraphNode(node, graph_path)
        for attr in node.attribute:
            prefix = f"{graph_path}/" if graph_path else ""
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g, f"{prefix}{node.name or node.op_type}/{attr.name}")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from iter_nodes(sub, f"{prefix}{node.name or node.op_type}/{attr.name}[{i}]")


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    import onnx

    ttype = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    dims: tuple[int | str | None, ...] | None = None
    if ttype.HasField("shape"):
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim
        )
    return TensorSpec(value.name, dtype, dims)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(n.in_subgraph for n in iter_nodes(model.graph))


def all_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of the main graph and of every subgraph."""
    import onnx

    def walk(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        yield from walk(sub)

    yield from walk(model.graph)


def tensor_numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's data takes, without materialising it."""
    import onnx

    count = tensor_numel(tensor)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def model_nbytes(model: onnx.ModelProto) -> int:
    """Serialized size estimate: protobuf without weights plus the weights."""
    return sum(tensor_nbytes(t) for t in all_initializers(model)) + 64 * sum(1 for _ in iter_nodes(model.graph))


def is_same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(output: Path, *, inputs: tuple[Path, ...], force: bool) -> None:
    """Refuse to write over an input (directly or through a link) and, without force, over anything."""
    if output.exists() and output.is_dir():
        raise OutputError(f"output is a folder: {output}", hint="give a file name ending in .onnx")
    for src in inputs:
        if output.resolve() == src.resolve() or is_same_file(output, src):
            raise OutputError(f"output {output} is the input model {src}",
                              hint="write to a new file; qconvert never modifies its input")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputError(f"output exists: {output}", hint="pass --force to replace it")
    if not output.parent.exists():
        raise OutputError(f"output folder does not exist: {output.parent}", hint="create it first")


@contextlib.contextmanager
def staging_dir(output: Path) -> Iterator[Path]:
    """A temporary folder beside `output` (same file system, so renames are atomic), always removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".qconvert-tmp", dir=output.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(staged: Path, output: Path) -> int:
    """Rename a model staged (by `staging_dir`) beside `output` into place, with its sidecar if any.

    onnxruntime writes a model's sidecar as `<staged name>.data`; the staged model is named like
    the output so the location recorded in it is already right.
    """
    sidecar = staged.parent / (staged.name + ".data")
    written = file_nbytes(staged)
    if sidecar.exists():
        os.replace(sidecar, output.parent / sidecar.name)
    os.replace(staged, output)
    return written


def file_nbytes(model: Path) -> int:
    """Bytes of a model file written by onnxruntime and of its `<name>.data` sidecar, if any."""
    sidecar = model.parent / (model.name + ".data")
    return model.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
