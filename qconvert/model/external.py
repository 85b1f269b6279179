"""External data (weights in sidecar files), validated by qconvert before a byte is read.

A model names its sidecars itself (`location`, `offset`, `length` per tensor), so a hostile or
broken model can point anywhere: an absolute path, `../`, a symlink or hard link out of its folder,
a FIFO that blocks forever, a device that never ends, or a length that makes the reader allocate
terabytes. onnx's and onnxruntime's own checks have needed five CVEs and still follow hard links
(onnxruntime) and directory symlinks (onnx with `base_dir=""`). Here every reference is checked
against the model's folder first (`plan_external_data`), and only then are the bytes read, by us,
from the very file that was checked (`ExternalPlan.load`, `ExternalPlan.chunks`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.errors import ModelError

if TYPE_CHECKING:
    import onnx

# No model qconvert can quantize holds more weights than this; a claim above it is corrupt or hostile.
MAX_TOTAL_BYTES = 1 << 40  # 1 TiB
CHUNK_BYTES = 1 << 24  # a multiple of every element size
# onnxruntime reads `offset` as a process memory address when a tensor's location is this string.
ORT_MEMORY_LOCATION = "*/_ORT_MEM_ADDR_/*"
_KNOWN_KEYS = ("location", "offset", "length", "checksum", "basepath")
_DIGITS = re.compile(r"[0-9]+")
_HINT_PATH = ("keep the model's external data files inside its folder, as plain files; re-export or re-save "
              "the model")
_HINT_RANGE = "the external data file is truncated or does not belong to this model; re-export the model"


@dataclass(frozen=True)
class SidecarFile:
    """A sidecar as checked: where it really is and which inode it was, so a swap is noticed."""

    path: Path  # symlinks resolved
    device: int
    inode: int
    size: int


@dataclass(frozen=True, eq=False)
class ExternalRef:
    """One tensor's validated external bytes."""

    tensor: onnx.TensorProto
    name: str
    location: str
    offset: int
    length: int


@dataclass
class ExternalPlan:
    """Every external reference of a model, validated; nothing read yet."""

    model_path: Path  # absolute
    shown: str  # the path as the caller gave it, for messages
    refs: dict[int, ExternalRef] = field(default_factory=dict)  # position among the tensors checked -> ref
    files: dict[str, SidecarFile] = field(default_factory=dict)  # location -> file

    @property
    def file_bytes(self) -> int:
        return sum(f.size for f in {f.path: f for f in self.files.values()}.values())

    def chunks(self, ref: ExternalRef, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The tensor's bytes in chunks of `size` (the last may be shorter), read from the checked file."""
        fd = self._open(ref.location)
        try:
            done = 0
            while done < ref.length:
                want = min(size, ref.length - done)
                data = os.pread(fd, want, ref.offset + done)
                if len(data) != want:
                    raise ModelError(f"{self.shown}: external data file {ref.location!r} of tensor "
                                     f"{ref.name!r} ended early", hint=_HINT_RANGE)
                done += want
                yield data
        finally:
            os.close(fd)

    def load(self, tensors: Sequence[onnx.TensorProto] | None = None) -> None:
        """Read every external tensor into its `raw_data`; the model no longer refers to sidecars.

        `tensors` are the same model's tensors in the order they were checked, in a copy of it
        (`qconvert.sanity.tensor_sites`): the copy gets the weights, the checked model keeps
        referring to its sidecars."""
        import onnx

        by_file: dict[str, list[tuple[onnx.TensorProto, ExternalRef]]] = {}
        for position, ref in self.refs.items():
            target = ref.tensor if tensors is None else tensors[position]
            by_file.setdefault(ref.location, []).append((target, ref))
        for location, pairs in by_file.items():
            fd = self._open(location)
            try:
                for target, ref in pairs:
                    data = os.pread(fd, ref.length, ref.offset) if ref.length else b""
                    if len(data) != ref.length:
                        raise ModelError(f"{self.shown}: external data file {location!r} of tensor "
                                         f"{ref.name!r} ended early", hint=_HINT_RANGE)
                    target.raw_data = data
                    del target.external_data[:]
                    target.data_location = onnx.TensorProto.DEFAULT
            finally:
                os.close(fd)

    def _open(self, location: str) -> int:
        """Open the checked file without following a link swapped in since, without blocking on a
        FIFO swapped in since, and make sure it is still the same regular file."""
        known = self.files[location]
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(known.path, flags)
        except OSError as exc:
            raise ModelError(f"{self.shown}: cannot open external data file {location!r}: "
                             f"{exc.strerror or exc}", hint=_HINT_PATH) from exc
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (known.device, known.inode) or not stat.S_ISREG(st.st_mode) \
                or st.st_nlink != 1 or st.st_size < known.size:
            os.close(fd)
            raise ModelError(f"{self.shown}: external data file {location!r} changed while it was read",
                             hint="do not modify the model while qconvert reads it")
        return fd


# Bits per element of each onnx.TensorProto.DataType (the enum is part of the ONNX spec; a unit
# test checks these against onnx). STRING (8) and UNDEFINED (0) have no fixed size.
ELEMENT_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
    16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6,
}


def element_bits(data_type: int) -> int | None:
    """Bits per element of an ONNX tensor type; None for strings and unknown types."""
    return ELEMENT_BITS.get(data_type)


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type need (Python ints: no overflow); None when unknown.
    Negative dims are the caller's to refuse first."""
    bits = element_bits(tensor.data_type)
    if bits is None:
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return (count * bits + 7) // 8


def _fields(tensor: onnx.TensorProto) -> tuple[str, int | None, int | None]:
    """(location, offset, length) of an external tensor; offsets and lengths as given, checked."""
    values: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in _KNOWN_KEYS and entry.key in values:
            raise ModelError(f"tensor {tensor.name!r} names its external {entry.key!r} twice",
                             hint="the model is corrupt; re-export it")
        values[entry.key] = entry.value
    if "location" not in values:
        raise ModelError(f"tensor {tensor.name!r} is stored externally but has no location",
                         hint="the model is corrupt; re-export it")
    numbers: dict[str, int | None] = {}
    for key in ("offset", "length"):
        text = values.get(key)
        if text is None:
            numbers[key] = None
        elif _DIGITS.fullmatch(text) is None:
            raise ModelError(f"tensor {tensor.name!r} has external {key} {text[:40]!r}, not a non-negative integer",
                             hint="the model is corrupt; re-export it")
        else:
            numbers[key] = int(text)
    return values["location"], numbers["offset"], numbers["length"]


def _check_location(location: str) -> str | None:
    """Why a location string is refused, or None."""
    if not location:
        return "is empty"
    if location == ORT_MEMORY_LOCATION:
        return "is onnxruntime's in-memory marker (a raw memory address)"
    if "\0" in location:
        return "contains a NUL character"
    if location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", location) or os.path.isabs(location):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", location):
        return "leaves the model folder through '..'"
    return None


def _check_file(shown: str, base: Path, real_base: Path, location: str, tensor: str) -> SidecarFile:
    where = f"{shown}: external data file {location!r} of tensor {tensor!r}"
    candidate = base / location
    try:
        real = Path(os.path.realpath(candidate, strict=True))
    except FileNotFoundError as exc:
        raise ModelError(f"{where} is missing", hint="keep the model's .data files next to it") from exc
    except OSError as exc:  # a link loop, a too-long name
        raise ModelError(f"{where} cannot be resolved: {exc.strerror or exc}", hint=_HINT_PATH) from exc
    if real == real_base:
        raise ModelError(f"{where} is the model folder itself, not a file", hint=_HINT_PATH)
    if real_base not in real.parents:
        raise ModelError(f"{where} is outside the model folder (a symlink leads to {real})", hint=_HINT_PATH)
    try:
        st = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise ModelError(f"{where} cannot be read: {exc.strerror or exc}", hint=_HINT_PATH) from exc
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"{where} is a folder, not a file", hint=_HINT_PATH)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise ModelError(f"{where} is {kind}, not a regular file", hint=_HINT_PATH)
    if st.st_nlink > 1:
        raise ModelError(f"{where} has {st.st_nlink} hard links (one may lie outside the model folder)",
                         hint="copy the file instead of hard-linking it")
    return SidecarFile(real, st.st_dev, st.st_ino, st.st_size)


def plan_external_data(tensors: Iterable[onnx.TensorProto], path: Path) -> ExternalPlan:
    """Check every external reference among `tensors` (every tensor of the model loaded from
    `path`: see `qconvert.sanity.tensor_sites`) against the model's folder; read nothing.

    Refused: a location that is empty, absolute, has a `..` component or is onnxruntime's
    memory marker; a file that is missing, resolves (through symlinks) outside the folder, is not a
    regular file, or has more than one hard link; an offset or length that is not a non-negative
    integer or runs past the end of the file; a length other than what dims times type need; a total
    above `MAX_TOTAL_BYTES`.
    """
    import onnx

    shown = str(path)
    path = Path(os.path.abspath(path))
    base = path.parent
    real_base = Path(os.path.realpath(base))
    plan = ExternalPlan(model_path=path, shown=shown)
    total = 0
    for index, tensor in enumerate(tensors):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        name = tensor.name
        try:
            location, offset, length = _fields(tensor)
        except ModelError as exc:
            raise ModelError(f"{shown}: {exc.message}", hint=exc.hint) from None
        why = _check_location(location)
        if why is not None:
            raise ModelError(f"{shown}: external data location {location[:80]!r} of tensor {name!r} {why}",
                             hint=_HINT_PATH)
        if len(tensor.raw_data):
            raise ModelError(f"{shown}: tensor {name!r} holds both raw data and an external reference",
                             hint="the model is corrupt; re-export it")
        if any(d < 0 for d in tensor.dims):
            raise ModelError(f"{shown}: tensor {name!r} has a negative dimension {list(tensor.dims)}",
                             hint="the model is corrupt; re-export it")
        need = expected_bytes(tensor)
        if need is None:
            raise ModelError(f"{shown}: tensor {name!r} of type {tensor.data_type} cannot be stored externally",
                             hint="the model is corrupt; re-export it")
        if need > MAX_TOTAL_BYTES:
            raise ModelError(f"{shown}: tensor {name!r} claims {need} bytes of external data",
                             hint="the model's shapes are corrupt; re-export it")
        if location not in plan.files:
            plan.files[location] = _check_file(shown, base, real_base, location, name)
        size = plan.files[location].size
        start = offset or 0
        if start > size:
            raise ModelError(f"{shown}: tensor {name!r} starts at offset {start}, past the end of "
                             f"{location!r} ({size} bytes)", hint=_HINT_RANGE)
        count = size - start if length is None else length
        if start + count > size:
            raise ModelError(f"{shown}: tensor {name!r} reads {count} bytes at offset {start}, past the end of "
                             f"{location!r} ({size} bytes)", hint=_HINT_RANGE)
        if count != need:
            raise ModelError(f"{shown}: tensor {name!r} has {count} bytes of external data but its shape "
                             f"{list(tensor.dims)} needs {need}", hint=_HINT_RANGE)
        total += count
        if total > MAX_TOTAL_BYTES:
            raise ModelError(f"{shown}: external data adds up to more than {MAX_TOTAL_BYTES} bytes",
                             hint="the model is corrupt or hostile; re-export it")
        plan.refs[index] = ExternalRef(tensor, name, location, start, count)
    return plan
