"""Loading, describing and saving ONNX models: external data, >2 GB models, atomic writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ModelError
from qconvert.model.graph import PROTOBUF_LIMIT

if TYPE_CHECKING:
    import onnx

    from qconvert.model.external import ExternalPlan


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and dims (ints, symbolic names, or None)."""

    name: str
    dtype: np.dtype[np.generic]
    dims: tuple[int | str | None, ...] | None  # None when the rank is unknown

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": str(self.dtype),
                "shape": None if self.dims is None else list(self.dims)}


@dataclass
class LoadedModel:
    """A checked model with where it came from.

    `proto` holds the graph and the weights stored in the .onnx file; weights in external data
    stay on disk (checked, not read), so a model of any size costs only its graph here. A step
    that needs every weight in memory, or modifies the model, takes `owned_copy()`.
    """

    proto: onnx.ModelProto
    path: Path
    uses_external_data: bool
    file_bytes: int  # the .onnx file plus its external-data files
    external: ExternalPlan | None = field(default=None, repr=False)

    def owned_copy(self) -> onnx.ModelProto:
        """An independent copy of the model with every weight in memory, read from the checked sidecars."""
        import onnx

        from qconvert.model.checks import tensor_sites

        copy = onnx.ModelProto()
        copy.CopyFrom(self.proto)
        if self.external is not None and self.external.refs:
            self.external.load([site.tensor for site in tensor_sites(copy)])
        return copy


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model, refusing anything that is not a usable ONNX model.

    Every check of `check_model_file` runs; external data is validated against the model's folder
    and left on disk until `LoadedModel.owned_copy()` reads it.
    """
    p = Path(path)
    proto, plan, size = _checked(p)
    return LoadedModel(proto=proto, path=p, uses_external_data=bool(plan.refs), file_bytes=size, external=plan)


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Refuse a model file before it is handed to onnxruntime (which reads it, and its external
    data, by itself), without keeping its weights: what `load_model` checks, external tensors
    streamed in chunks (see `qconvert.model.checks` and `qconvert.model.external`)."""
    _checked(Path(path))


def _checked(p: Path) -> tuple[onnx.ModelProto, ExternalPlan, int]:
    """The parsed model, its validated external-data plan and its size with its sidecars."""
    from qconvert.model import checks as sanity
    from qconvert.model.external import plan_external_data

    proto = _parse(p)
    sanity.check_structure(proto, p)
    sites = list(sanity.tensor_sites(proto))
    plan = plan_external_data([s.tensor for s in sites], p)
    sanity.check_tensors(sites, plan, p, sanity.weight_names(proto))
    return proto, plan, os.stat(p).st_size + plan.file_bytes


def _parse(p: Path) -> onnx.ModelProto:
    """The ModelProto in a regular file (never a FIFO or a device), read by us."""
    import stat

    import onnx
    from google.protobuf.message import DecodeError

    if not p.exists():
        raise ModelError(f"model not found: {p}", hint="check the path")
    if p.is_dir():
        raise ModelError(f"model is not a file: {p}", hint="pass the .onnx file, not a folder")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelError(f"cannot open model {p}: {exc.strerror or exc}", hint="check the path") from exc
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"model is not a regular file: {p}", hint="pass the .onnx file itself")
        if st.st_size == 0:
            raise ModelError(f"model file is empty: {p}", hint="the file was truncated or never written")
        if st.st_size > PROTOBUF_LIMIT:
            raise ModelError(f"{p.name}: {st.st_size} bytes is more than an ONNX model file can hold "
                             f"({PROTOBUF_LIMIT}); weights that large belong in external data",
                             hint="the file is corrupt, or not an ONNX model")
        data = f.read(st.st_size + 1)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{p}: not a valid ONNX model ({exc})",
                         hint="the file is corrupt, truncated, or not an ONNX ModelProto") from exc
    return proto


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
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
            for d in ttype.shape.dim
        )
    return TensorSpec(value.name, dtype, dims)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]
