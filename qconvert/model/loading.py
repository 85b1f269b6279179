"""Loading, describing and saving ONNX models: external data, >2 GB models, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.errors import ModelError, OutputError, out_of_space

if TYPE_CHECKING:
    import onnx

    from qconvert.model.external import ExternalPlan

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
    """Bytes a tensor's data takes, without materialising it (a byte per element when the type has
    no fixed size, such as strings)."""
    from qconvert.model.external import expected_bytes

    need = expected_bytes(tensor)
    return tensor_numel(tensor) if need is None else need


def model_nbytes(model: onnx.ModelProto) -> int:
    """Serialized size estimate: protobuf without weights plus the weights."""
    return sum(tensor_nbytes(t) for t in all_initializers(model)) + 64 * sum(1 for _ in iter_nodes(model.graph))


def is_same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same path once resolved (existing or not), or the
    same existing file through a symlink or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(output: Path, *, inputs: tuple[Path, ...], force: bool) -> None:
    """Refuse to write over an input (directly or through a link) and, without force, over anything."""
    if output.exists() and output.is_dir():
        raise OutputError(f"output is a folder: {output}", hint="give a file name ending in .onnx")
    for src in inputs:
        if is_same_file(output, src):
            raise OutputError(f"output {output} is the input model {src}",
                              hint="write to a new file; qconvert never modifies its input")
    ours = [p.name for p in output.parent.glob(f"{glob.escape(output.name)}*.data") if _is_sidecar_of(output, p.name)]
    for src in inputs:
        if ours and src.resolve().parent == output.resolve().parent and set(ours) & _locations(src):
            raise OutputError(f"writing {output} would replace the external data of the input {src}",
                              hint="choose another output name or folder")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputError(f"output exists: {output}", hint="pass --force to replace it")
    if not output.parent.exists():
        raise OutputError(f"output folder does not exist: {output.parent}", hint="create it first")


TEMP_SUFFIX = ".qconvert-tmp"
# The supervising CLI process (qconvert.cli.supervise) puts a pipe's file descriptor here; every
# temporary path is logged to it so that a worker killed mid-write is cleaned up by its parent.
TEMP_LOG_ENV = "QCONVERT_TEMP_LOG_FD"


def _log_temporary(path: Path) -> None:
    fd = os.environ.get(TEMP_LOG_ENV)
    if fd and fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), f"{path.resolve()}\n".encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    try:  # a zombie (killed, not yet reaped) answers kill(0) too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_stale(folder: Path, stem: str) -> None:
    """Remove temporaries `.{stem}.{pid}.*.qconvert-tmp` left in `folder` by killed processes."""
    for path in folder.glob(f".{glob.escape(stem)}.*{TEMP_SUFFIX}"):
        pid = path.name[len(stem) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            remove_temporary(path)


def remove_temporary(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _temporary(folder: Path, stem: str, *, directory: bool) -> Iterator[Path]:
    """A new temporary file or folder in `folder`, named `.{stem}.{pid}.{random}` + TEMP_SUFFIX,
    removed however the block ends. Its name is chosen and recorded for cleanup before it is made,
    inside the `try`: an interrupt between making it and recording it would otherwise leave it
    behind unrecorded (seen under load: a SIGTERM right after mkdtemp)."""
    tmp = folder / f".{stem}.{os.getpid()}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    try:
        _log_temporary(tmp)
        if directory:
            tmp.mkdir(mode=0o700)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
    finally:
        remove_temporary(tmp)


def staging_dir(output: Path) -> contextlib.AbstractContextManager[Path]:
    """A temporary folder beside `output` (same file system, so renames are atomic), always removed;
    ones left by killed runs for the same output are removed first."""
    sweep_stale(output.parent, output.name)
    return _temporary(output.parent, output.name, directory=True)


def scratch_dir() -> contextlib.AbstractContextManager[Path]:
    """A temporary folder in the system's temp location, always removed (and logged for cleanup)."""
    return _temporary(Path(tempfile.gettempdir()), "qconvert", directory=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, text: str) -> None:
    """Write a text file through a temporary beside it and a rename: readers see the old or the new file."""
    with _temporary(path.parent, path.name, directory=False) as tmp:
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would create it (mkstemp makes 0600)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_output(path: Path, text: str, what: str) -> None:
    """`write_atomically` for an output the user named: a path that cannot be written is bad
    input (exit 2); a full disk is the environment's failure and goes on to the error mapper (exit 4)."""
    try:
        write_atomically(path, text)
    except OSError as exc:
        if out_of_space(exc):
            raise
        raise OutputError(f"cannot write the {what} {path}: {exc.strerror or exc}",
                          hint="check the folder exists and is writable") from exc


def _locations(model: Path) -> set[str]:
    import onnx

    try:
        return _external_files(onnx.load(str(model), load_external_data=False))
    except Exception:  # noqa: BLE001 - a broken previous output has no sidecar worth keeping
        return set()


def move_into_place(staged: Path, output: Path) -> int:
    """Rename a model staged (by `staging_dir`) beside `output` into place, all or nothing.

    onnxruntime writes a model's sidecar as `<staged name>.data`. It is renamed to a name that
    carries a digest of its bytes (so the same weights always get the same name) and moved first:
    until the model's own rename, the previous output still reads its previous sidecar. Then the
    previous output's sidecars that the new model does not use are removed; only sidecars named
    the way qconvert names them (`check_output_path` keeps inputs' sidecars out of that namespace).
    """
    sidecar = staged.parent / (staged.name + ".data")
    written = file_nbytes(staged)
    previous = _locations(output) if output.is_file() and not output.is_symlink() else set()
    new: set[str] = set()
    if sidecar.exists():
        name = f"{output.name}.{_digest(sidecar)}.data"
        _relocate(staged, sidecar.name, name)
        written = staged.stat().st_size + sidecar.stat().st_size
        os.replace(sidecar, output.parent / name)
        new.add(name)
    try:
        os.replace(staged, output)
    except BaseException:
        for name in new - previous:
            (output.parent / name).unlink(missing_ok=True)
        raise
    for name in sorted(previous - new):
        stale = output.parent / name
        if _is_sidecar_of(output, name) and stale.is_file():
            stale.unlink()
    return written


def _is_sidecar_of(output: Path, name: str) -> bool:
    """Whether `name` is one of the sidecar names qconvert gives `output`'s weights."""
    return re.fullmatch(re.escape(output.name) + r"(\.[0-9a-f]{12})?\.data", name) is not None


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=6)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _relocate(model_path: Path, old: str, new: str) -> None:
    """Point every external tensor of a saved model from sidecar `old` to sidecar `new`."""
    import onnx
    import onnx.external_data_helper as edh

    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in edh._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(model, str(model_path))


def file_nbytes(model: Path) -> int:
    """Bytes of a model file written by onnxruntime and of its `<name>.data` sidecar, if any."""
    sidecar = model.parent / (model.name + ".data")
    return model.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
