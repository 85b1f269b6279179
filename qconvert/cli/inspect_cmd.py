"""`qconvert inspect`."""

from __future__ import annotations

from qconvert.cli.app import command
from qconvert.cli.options import JsonOpt, ModelArg


@command("inspect")
def inspect(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Describe a model: opsets, inputs/outputs, op types (subgraphs included), weights, quantization state."""
    from qconvert import describe
    from qconvert.cli import render

    result = describe(model)
    if as_json:
        render.print_json(result.to_dict())
    else:
        render.inspect_result(result)
