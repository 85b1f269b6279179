"""The README's command reference is generated from the commands (`make docs`), so it cannot drift
from `--help`: the section checked in equals the generated text, and every option `--help` shows
is in it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from qconvert.cli import reference
from qconvert.cli.app import app
from tests.conftest import REPO

runner = CliRunner()
README = REPO / "README.md"
COMMANDS = sorted(typer.main.get_command(app).commands)
OPTION = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


def _sections(text: str) -> dict[str, str]:
    """The reference split by command ('' for the global options)."""
    found: dict[str, str] = {}
    for block in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title = block.split("\n", 1)[0]
        name = re.fullmatch(r"`qconvert ?(\w*)`.*", title)
        assert name, title
        found[name.group(1)] = block
    return found


def test_readme_reference_is_the_generated_one() -> None:
    readme = README.read_text(encoding="utf-8")
    assert reference.replace_section(readme, reference.markdown()) == readme, (
        "the README's command reference is stale: run `make docs`")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_option_help_shows_is_in_the_reference(command: str) -> None:
    result = runner.invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    shown = {o for o in OPTION.findall(result.stdout) if o not in ("-", "--")}
    assert "--help" in shown
    documented = set(OPTION.findall(_sections(reference.markdown())[command]))
    assert shown <= documented, f"in --help, not in the reference: {shown - documented}"


def test_every_command_has_a_section() -> None:
    assert sorted(_sections(reference.markdown())) == ["", *COMMANDS]


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "README.md"
    shutil.copy(README, copy)
    assert reference.main(["--check", str(copy)]) == 0
    copy.write_text(copy.read_text(encoding="utf-8").replace("| `--json` | flag |", "| `--json` | switch |", 1),
                    encoding="utf-8")
    assert reference.main(["--check", str(copy)]) == 1
    assert "make docs" in capsys.readouterr().err
    assert reference.main(["--write", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
    (tmp_path / "plain.md").write_text("# no markers\n", encoding="utf-8")
    assert reference.main(["--check", str(tmp_path / "plain.md")]) == 2
