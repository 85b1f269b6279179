"""`qconvert providers`."""

from __future__ import annotations

from qconvert.cli.app import command
from qconvert.cli.options import JsonOpt


@command("providers")
def providers(as_json: JsonOpt = False) -> None:
    """List the execution providers this onnxruntime and its plugin packages offer, with their devices."""
    from qconvert.cli import render
    from qconvert.providers import list_providers

    render.providers(list_providers(), as_json=as_json)
