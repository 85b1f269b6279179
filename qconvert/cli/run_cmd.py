"""`qconvert run RECIPE.toml`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qconvert.cli.app import app, command
from qconvert.errors import UsageError


@command("run", isolate=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="Recipe file (TOML), e.g. from --save-recipe.", show_default=False)],
) -> None:
    """Run the command a recipe file describes. Options after the file override the recipe's,
    e.g. `qconvert run job.toml --json`."""
    from qconvert.cli import recipe as recipes
    from qconvert.cli import render

    argv = recipes.to_argv(ctx, recipes.load(recipe), recipe.parent, list(ctx.args))
    render.replaying(argv)
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="qconvert", standalone_mode=False)
    except Exception as exc:
        describe = getattr(exc, "format_message", None)
        if callable(describe):  # the command line's own parse error
            raise UsageError(f"recipe {recipe}: {describe()}",
                             hint="check the recipe's values against the command's --help") from exc
        raise
    if code:
        raise typer.Exit(code)
