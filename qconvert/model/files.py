"""Files qconvert writes: output checks, temporaries that are always removed, atomic writes and
all-or-nothing model outputs with their sidecars."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.errors import OutputError, out_of_space

if TYPE_CHECKING:
    import onnx

def _external_files(model: onnx.ModelProto) -> set[str]:
    import onnx.external_data_helper as edh

    files = set()
    for tensor in edh._get_all_tensors(model):
        if edh.uses_external_data(tensor):
            info = edh.ExternalDataInfo(tensor)
            files.add(info.location)
    return files


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
_on_temporary: ContextVar[Callable[[Path], None] | None] = ContextVar("qconvert_on_temporary", default=None)


def record_temporaries(hook: Callable[[Path], None] | None) -> None:
    """Give every temporary path to `hook` before it is made (None: to nobody). A supervisor
    installs one in its worker (qconvert's CLI logs them to its parent), so that temporaries of a
    worker killed mid-write are removed by the parent."""
    _on_temporary.set(hook)


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
        hook = _on_temporary.get()
        if hook is not None:
            hook(tmp.resolve())
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


def model_files(model: Path) -> list[Path]:
    """A model's file and the external-data files it names."""
    return [model, *(model.parent / name for name in sorted(_locations(model)))]


def remove_model(model: Path) -> None:
    """Delete a model qconvert wrote and the external-data files beside it that it names."""
    for name in _locations(model):
        (model.parent / name).unlink(missing_ok=True)
    model.unlink(missing_ok=True)


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


def save_model(proto: onnx.ModelProto, path: Path, *, external: bool) -> None:
    """Save `proto` at `path`; `external`: every weight over 1 KiB in one `<name>.data` beside it."""
    import onnx

    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


def file_nbytes(model: Path) -> int:
    """Bytes of a model file written by onnxruntime and of its `<name>.data` sidecar, if any."""
    sidecar = model.parent / (model.name + ".data")
    return model.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)

