"""The README's command reference, generated from the very objects `--help` renders.

`markdown()` walks the click command tree Typer builds (`typer.main.get_command(app)`): for every
command its usage line, its docstring and a table of its arguments and options (flags, type or
choices, default, help), grouped in the panels `--help` shows. The output depends only on the
commands' declarations, never on the terminal, so it is stable enough to check in and compare.

    python -m qconvert.cli.reference --write README.md   # replace the section between the markers
    python -m qconvert.cli.reference --check README.md   # exit 1 when that section is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

START = "<!-- reference:start -->"
END = "<!-- reference:end -->"
PROG = "qconvert"
_DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]*)\]")
_TYPES = {"str": "text", "text": "text", "int": "integer", "integer": "integer", "float": "number", "path": "path"}


def markdown(app: typer.Typer | None = None) -> str:
    """The whole reference: global options, then every command in alphabetical order."""
    if app is None:
        from qconvert.cli.app import app as qconvert_app

        app = qconvert_app
    root: Any = typer.main.get_command(app)
    root_ctx = typer.Context(root, info_name=PROG, **root.context_settings)  # as make_context builds it
    parts = [_section(root, root_ctx, f"`{PROG}` (global options)")]
    for name in sorted(root.commands):
        command = root.commands[name]
        if not command.hidden:
            ctx = typer.Context(command, info_name=name, parent=root_ctx, **command.context_settings)
            parts.append(_section(command, ctx, f"`{PROG} {name}`"))
    return "\n".join(parts)


def _section(command: Any, ctx: typer.Context, title: str) -> str:
    pieces = [str(p) for p in command.collect_usage_pieces(ctx)]
    lines = [f"### {title}", "", "```", " ".join([ctx.command_path, *pieces]), "```", ""]
    about = _paragraphs(command.help or "", "\n\n")
    if about:
        lines += [about, ""]
    panels: dict[str, tuple[str, list[str]]] = {}  # title -> (argument or option, table rows)
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        kind = "argument" if param.param_type_name == "argument" else "option"
        panel = getattr(param, "rich_help_panel", None) or f"{kind.capitalize()}s"
        panels.setdefault(panel, (kind, []))[1].append(_row(param, ctx))
    commands = getattr(command, "commands", {})
    if commands:
        rows = [f"| [`{name}`](#{_anchor(PROG, name)}) | {_cell(_paragraphs(commands[name].help or ''))} |"
                for name in sorted(commands) if not commands[name].hidden]
        panels["Commands"] = ("command", rows)
    order = ["Arguments", "Options", "Commands", *sorted(set(panels) - {"Arguments", "Options", "Commands"})]
    for panel in [p for p in order if p in panels]:
        kind, rows = panels[panel]
        header = ["| command | description |", "|---|---|"] if kind == "command" else [
            f"| {kind} | type | default | description |", "|---|---|---|---|"]
        lines += [f"{panel}:", "", *header, *rows, ""]
    return "\n".join(lines)


def _row(param: Any, ctx: typer.Context) -> str:
    help_text, default = _help_and_default(param, ctx)
    cells = [_flags(param), _type(param), default, help_text]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _flags(param: Any) -> str:
    if param.param_type_name == "argument":
        name = str(param.name).upper()
        return f"`{name}…`" if param.nargs != 1 else f"`{name}`"
    flags = [*param.opts, *param.secondary_opts]
    longs = [f for f in flags if f.startswith("--")]
    shorts = [f for f in flags if not f.startswith("--")]
    return ", ".join(f"`{f}`" for f in [*longs[:1], *shorts, *longs[1:]])


def _type(param: Any) -> str:
    kind = param.type
    if getattr(param, "is_flag", False):
        text = "flag"
    elif hasattr(kind, "choices"):
        text = " | ".join(f"`{_plain(c)}`" for c in kind.choices)
    else:
        base = kind.name.split()[0]
        text = _TYPES.get(base, base) + (_bounds(kind) if hasattr(kind, "min") else "")
    if param.multiple or param.nargs == -1:
        text += ", repeatable"
    if param.required:
        text += ", required"
    return text


def _bounds(kind: Any) -> str:
    low, high = kind.min, kind.max
    if low is not None and high is not None:
        return f" {low:g}–{high:g}"
    if low is not None:
        return f" > {low:g}" if kind.min_open else f" ≥ {low:g}"
    if high is not None:
        return f" < {high:g}" if kind.max_open else f" ≤ {high:g}"
    return ""


def _help_and_default(param: Any, ctx: typer.Context) -> tuple[str, str]:
    """The help text and the default `--help` means to show: `show_default` when it is text, else the
    default value unless hidden, else a `[default: …]` written into the help text itself."""
    text = _paragraphs(getattr(param, "help", None) or "")
    written = _DEFAULT_IN_HELP.search(text)
    if written:
        text = _DEFAULT_IN_HELP.sub("", text, count=1)
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return text, shown
    if written:
        return text, written.group(1)
    if shown is False or param.required:
        return text, ""
    value = param.get_default(ctx, call=False)
    if getattr(param, "is_flag", False):
        if not param.secondary_opts:
            return text, ""
        return text, f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    if value is None or value in ("", [], ()):
        return text, ""
    values = value if isinstance(value, list | tuple) else [value]
    return text, ", ".join(f"`{_plain(v)}`" for v in values)


def _plain(value: object) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def _paragraphs(text: str, separator: str = " ") -> str:
    """Help text with its lines joined, paragraphs separated by `separator` (Typer, like click,
    shows nothing after a form feed)."""
    text = text.split("\f", maxsplit=1)[0]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return separator.join(p for p in paragraphs if p)


def _anchor(*words: str) -> str:
    """GitHub's anchor for a heading `qconvert NAME` (in backticks)."""
    return "-".join(words)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def replace_section(document: str, generated: str) -> str:
    """`document` with the text between the reference markers replaced by `generated`."""
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {START} … {END} are missing or out of order")
    return f"{document[:start + len(START)]}\n{generated}\n{document[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qconvert.cli.reference", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="FILE", help="replace the reference section of FILE")
    action.add_argument("--check", type=Path, metavar="FILE", help="exit 1 when the reference section of FILE is stale")
    args = parser.parse_args(argv)
    generated = markdown()
    target: Path | None = args.write or args.check
    if target is None:
        sys.stdout.write(generated + "\n")
        return 0
    try:
        current = target.read_text(encoding="utf-8")
        updated = replace_section(current, generated)
    except (OSError, ValueError) as exc:
        print(f"error: {target}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != current:
            print(f"{target}: the command reference is stale; run `make docs`", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        target.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
