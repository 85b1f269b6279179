"""Recipes: a command and its options in a TOML file, replayed by `qconvert run FILE`.

A recipe is the command line written down, so it lives with the command line: its keys are the
commands' own long option names (`min-cosine`, `per-channel`, `ep-option`, …) and argument names
(`model`), read from the very parameters `--help` describes. Every option therefore has a key,
and `--save-recipe` writes the keys a command was given. Unknown keys and values of the wrong
kind are errors. Relative paths in a recipe are relative to the recipe's own folder, so a
recipe checked in beside its model and data runs from anywhere.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from qconvert.errors import UsageError

RECIPE_VERSION = 1
# Options that say how to run qconvert, not what to do; a recipe has no key for them.
_NOT_RECIPE = {"help", "save_recipe", "install_completion", "show_completion"}
# Arguments and options that name paths although their type is text (globs, data sources).
_PATH_KEYS = {"model", "calib", "validate", "eval-data", "data"}
_HEADER = ("# qconvert recipe: run it with `qconvert run {name}`.\n"
           "# Keys are the command's long options; relative paths are relative to this file's folder.\n")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _key(param: Any) -> str:
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:] if longs else str(param.name).replace("_", "-")


def _params(command: Any) -> dict[str, Any]:
    return {_key(p): p for p in command.params if p.name not in _NOT_RECIPE}


def _commands(ctx: typer.Context) -> dict[str, Any]:
    root: Any = ctx.find_root().command
    return {name: cmd for name, cmd in root.commands.items() if "save_recipe" in {p.name for p in cmd.params}}


def keys(ctx: typer.Context, command: str) -> set[str]:
    """Every key a recipe for `command` may hold (the global options included)."""
    return {"recipe", "command", *_params(ctx.find_root().command), *_params(_commands(ctx)[command])}


def load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no recipe at {path}",
                         hint="write one with `qconvert quantize … --save-recipe FILE`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the recipe {path}: {exc}") from exc
    try:
        found: dict[str, Any] = tomllib.loads(text)
        return found
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", hint="see https://toml.io for the syntax") from exc


def to_argv(ctx: typer.Context, recipe: dict[str, Any], folder: Path, extra: list[str]) -> list[str]:
    """The command line a recipe stands for: global options, the command, its options, `extra`
    (options given after the recipe on the command line, which win), then its arguments."""
    recipe = dict(recipe)
    version = recipe.pop("recipe", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise UsageError(f"recipe version {version!r} is not one this qconvert reads ({RECIPE_VERSION})",
                         hint="write it again with --save-recipe")
    commands = _commands(ctx)
    name = recipe.pop("command", None)
    if name not in commands:
        raise UsageError(f"the recipe's `command` must be one of {', '.join(sorted(commands))}, not {name!r}",
                         hint='add e.g. command = "quantize"')
    scopes = (_params(ctx.find_root().command), _params(commands[name]))
    unknown = sorted(set(recipe) - set(scopes[0]) - set(scopes[1]))
    if unknown:
        near = difflib.get_close_matches(unknown[0], [*scopes[0], *scopes[1]], n=1)
        raise UsageError(f"unknown recipe key(s) for {name}: {', '.join(unknown)}",
                         hint=f"did you mean {near[0]!r}?" if near else f"`qconvert {name} --help` lists the options")
    argv: list[str] = []
    arguments: list[str] = []
    for scope in scopes:
        for key, param in scope.items():
            if key in recipe:
                words = _words(key, param, recipe[key], folder)
                (arguments if param.param_type_name == "argument" else argv).extend(words)
        if scope is scopes[0]:
            argv.append(name)
    return [*argv, *extra, "--", *arguments] if arguments else [*argv, *extra]


def _words(key: str, param: Any, value: Any, folder: Path) -> list[str]:
    """`value` of `key` as command-line words, checked against what the parameter takes."""
    many = param.multiple or param.nargs == -1
    values = value if isinstance(value, list) and many else [value]
    if isinstance(value, dict) or (isinstance(value, list) and not many):
        raise UsageError(f"recipe key {key}: expected a single value, got {type(value).__name__}")
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise UsageError(f"recipe key {key}: expected true or false, got {value!r}")
        return [_long(param)] if value else [o for o in param.secondary_opts if o.startswith("--")][:1]
    words: list[str] = []
    for item in values:
        if isinstance(item, bool | dict | list) or not isinstance(item, str | int | float):
            raise UsageError(f"recipe key {key}: expected {param.type.name} values, got {item!r}")
        text = _from_recipe(str(item), folder) if _is_path(key, param) else str(item)
        words += [text] if param.param_type_name == "argument" else [_long(param), text]
    return words


def _long(param: Any) -> str:
    return str(next(o for o in param.opts if o.startswith("--")))


def _is_path(key: str, param: Any) -> bool:
    return key in _PATH_KEYS or param.type.name == "path"


def _from_recipe(text: str, folder: Path) -> str:
    """A path as written in a recipe (relative to its folder) → as the command takes it."""
    return _rebase(text, lambda path: str(folder / path))


def _to_recipe(text: str, folder: Path) -> str:
    """A path as the command took it (relative to the working folder) → relative to `folder`."""
    return _rebase(text, lambda path: os.path.relpath(os.path.abspath(path), os.path.abspath(folder)))


def _rebase(text: str, move: Callable[[str], str]) -> str:
    """`move` applied to the relative path in `text`: the file of a file.py:function plugin, or the
    whole text. Synthetic data, a package.module:function plugin and absolute paths (a fixed place
    the user chose) stay as they are."""
    file, colon, function = text.rpartition(":")
    if colon and file.endswith(".py"):
        return f"{_rebase(file, move)}:{function}"
    if text == "synthetic" or (colon and os.sep not in text) or os.path.isabs(text):
        return text
    return move(text)


def save(ctx: typer.Context, path: Path) -> None:
    """Write the recipe that replays the command `ctx` runs: every option given explicitly (on
    the command line or from the environment), the global ones included."""
    import tomli_w

    from qconvert.cli.options import files_besides
    from qconvert.model.files import write_output
    from qconvert.report.writing import check_report_path

    check_report_path(path, inputs=files_besides(ctx, "save_recipe"))
    folder = path.parent
    recipe: dict[str, Any] = {"recipe": RECIPE_VERSION, "command": ctx.info_name}
    for scope in (ctx.find_root(), ctx):
        for key, param in _params(scope.command).items():
            source = scope.get_parameter_source(param.name)
            value = scope.params.get(param.name)
            if source is None or source.name == "DEFAULT" or value is None:
                continue
            recipe[key] = _recipe_value(key, param, value, folder)
    write_output(path, _HEADER.format(name=path.name) + tomli_w.dumps(recipe), "recipe")


def _recipe_value(key: str, param: Any, value: Any, folder: Path) -> Any:
    if isinstance(value, tuple | list):
        return [_recipe_value(key, param, v, folder) for v in value]
    if isinstance(value, bool | int | float):
        return value
    text = str(getattr(value, "value", value))  # enums by their value
    return _to_recipe(text, folder) if _is_path(key, param) else text
