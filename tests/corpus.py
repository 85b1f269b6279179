"""The bad-input corpus harness: every hostile or broken input must end in a documented exit code,
a short message without a traceback, untouched inputs and no leftover files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from qconvert.cli.app import app

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (hidden ones too, links not followed) with a digest of its bytes."""
    state: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            state[rel] = f"link:{path.readlink()}"
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = "special"
    return state


def refused(args: list[str | Path], *, folder: Path, code: int, message: str) -> str:
    """Run the CLI in-process on `args`; check it fails with `code` and a first line `error: …`
    containing `message`, prints nothing on stdout, and leaves every file under `folder` as it was.
    Returns stderr for further checks."""
    before = snapshot(folder)
    result = runner.invoke(app, [str(a) for a in args])
    err = result.stderr
    assert result.exit_code == code, f"exit {result.exit_code}, want {code}: {err}"
    assert "Traceback" not in err + result.stdout
    lines = err.splitlines()
    assert lines and lines[0].startswith("error:"), err
    assert message in err, f"{message!r} not in {err!r}"
    assert len(lines[0]) <= 400, "one short line, details below it"
    assert result.stdout == ""
    assert snapshot(folder) == before, "inputs changed or files were left behind"
    return err
