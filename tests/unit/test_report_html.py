"""The HTML report: the numbers of the JSON report, self-contained, escaped, and never a crash.

Payloads come from real runs of the command line on the bundled sample models (one run each,
shared by the module); the odd ones are made by editing those.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qconvert.cli.app import app
from qconvert.errors import ExitCode
from qconvert.report.html import render_html
from tests.conftest import SAMPLES

runner = CliRunner()
MODEL, CALIB, EVAL = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits.calib.npz", SAMPLES / "digits.eval.npz"
Payload = dict[str, Any]


def _json(*args: object, code: int = ExitCode.OK) -> Payload:
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == code, result.stderr
    payload: Payload = json.loads(result.stdout)
    return payload


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Payload]:
    """One payload of each kind, and the page the CLI wrote for the pipeline's (under "html")."""
    tmp = tmp_path_factory.mktemp("report")
    quant, report = tmp / "q.onnx", tmp / "r.html"
    pipeline = _json("quantize", MODEL, "-o", quant, "--calib", CALIB, "--calib-samples", 32, "--validate", EVAL,
                     "--labels", "labels", "--max-drop", 1, "--benchmark", "--runs", 20, "--analyze",
                     "--report", report)
    return {
        "pipeline": pipeline, "html": {"text": report.read_text(encoding="utf-8")},
        "search": _json("quantize", MODEL, "-o", tmp / "s.onnx", "--calib", CALIB, "--calib-samples", 16,
                        "--eval-data", EVAL, "--labels", "labels", "--eval-samples", 16, "--min-sqnr", 60,
                        "--max-trials", 2, code=ExitCode.GATE_FAILED),
        "quantize": _json("quantize", MODEL, "-o", tmp / "d.onnx"),
        "validate": _json("validate", MODEL, quant, "--data", EVAL, "--labels", "labels", "--samples", 16,
                          "--min-cosine", 0.9),
        "benchmark": _json("benchmark", MODEL, quant, "--runs", 5, "--warmup", 1),
        "analyze": _json("analyze", MODEL, quant, "--data", EVAL, "--labels", "labels", "--samples", 8),
    }


def _visible(page: str) -> str:
    """The page without the raw JSON at its end: what a reader sees without expanding it."""
    return page.split('<details id="payload">', maxsplit=1)[0]


def _batch(runs: dict[str, Payload]) -> Payload:
    """A batch of three: passed, missed a gate, and failed (its worker died)."""
    failed = {"error": "RuntimeFailure", "message": "the worker for bad.onnx died (signal SIGSEGV): a crash",
              "hint": "run this model alone with --debug", "details": ["first detail"], "exit_code": 5}
    items = [("passed", runs["pipeline"], None), ("missed", runs["search"], None), ("failed", None, failed)]
    return {"schema_version": 2, "command": "batch", "workers": 2, "seconds": 4.2, "passed": False,
            "counts": {"passed": 1, "missed": 1, "failed": 1}, "versions": runs["pipeline"]["versions"],
            "models": [{"model": f"m{i}.onnx", "output": f"out/m{i}.quant.onnx", "status": status, "seconds": 1.5,
                        "result": result, "error": error} for i, (status, result, error) in enumerate(items)]}


def test_the_cli_writes_the_page_of_its_json_report(runs: dict[str, Payload]) -> None:
    page = str(runs["html"]["text"])
    assert page == render_html(runs["pipeline"]) == render_html(copy.deepcopy(runs["pipeline"]))
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")


def test_the_page_shows_the_key_numbers(runs: dict[str, Payload]) -> None:
    payload = runs["pipeline"]
    shown = _visible(render_html(payload))
    quantized = payload["quantize"]
    assert "PASSED" in shown and f"×{quantized['size']['ratio']:.4g}" in shown
    assert f"({quantized['size']['before_bytes']:,} bytes)" in shown
    assert f"{quantized['nodes']['quantized']} of {quantized['nodes']['candidates']} candidates" in shown
    assert payload["gates"]
    for gate in payload["gates"]:
        relation = "≤" if gate["name"].startswith("max") else "≥"
        assert f"<td>{gate['value']:.6g}</td><td>{relation} {gate['threshold']:.6g}</td>" in shown
    (validated,) = payload["validate"]
    assert f"{validated['accuracy']['fp32_top1'] * 100:.4g} %" in shown
    assert f"{validated['outputs'][0]['mean_cosine']:.6g}" in shown
    (timed,) = payload["benchmark"]
    for model in timed["models"]:
        assert f"<td>{model['p50_ms']:.4g}</td>" in shown
        assert len(model["samples_ms"]) == 20
    assert shown.count("<circle") == 40  # every timed run of both models is a dot
    worst = payload["analyze"]["nodes"][0]
    assert f"<title>{worst['node']}</title>" in shown and f"{worst['own_sqnr_db']:.4g} dB" in shown
    assert shown.count("<svg") == 2  # latency, node errors: no placement on the CPU provider


def test_the_page_needs_no_network(runs: dict[str, Payload]) -> None:
    for kind in ("pipeline", "search", "quantize", "validate", "benchmark", "analyze"):
        page = render_html(runs[kind]).lower()
        for reference in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
            assert reference not in page, (kind, reference)


def test_strings_from_the_payload_are_escaped(runs: dict[str, Payload]) -> None:
    payload = copy.deepcopy(runs["pipeline"])
    hostile = '<script>alert("x")</script>\'&'
    payload["job"]["model"] = f"{hostile}.onnx"
    payload["analyze"]["nodes"][0]["node"] = f"<img src=x onerror=alert(1)>{hostile}"
    payload["quantize"]["warnings"] = ["Ünïcode 名前 — <marquee>"]
    page = render_html(payload)
    assert "<script" not in page and "<img" not in page and "<marquee" not in page
    shown = _visible(page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&amp;.onnx" in shown
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown and "Ünïcode 名前 — &lt;marquee&gt;" in shown


def test_a_batch_shows_every_model_and_why_it_did_not_pass(runs: dict[str, Payload]) -> None:
    shown = _visible(render_html(_batch(runs)))
    assert "GATE MISSED" in shown and "FAILED" in shown and "PASSED" in shown
    assert "the worker for bad.onnx died (signal SIGSEGV): a crash" in shown and "first detail" in shown
    missed = runs["search"]["gates"][0]
    assert f"{missed['name']} ({missed['output']}): {missed['value']:.4g} misses ≥ {missed['threshold']:g}" in shown
    for n in (1, 2, 3):
        assert f'href="#model-{n}"' in shown and f'id="model-{n}"' in shown
    assert shown.count("Accuracy search") == 1 and shown.count("Per-node error ranking") == 1


def test_the_search_shows_its_trials(runs: dict[str, Payload]) -> None:
    search = runs["search"]["search"]
    shown = _visible(render_html(runs["search"]))
    assert "TARGET MISSED" in shown and "★ written" in shown
    assert len(re.findall(r"<td>\d+(?: ★ written)?</td><td>\d+</td><td>float</td>", shown)) == len(search["trials"])


def test_decibels_that_are_not_numbers(runs: dict[str, Payload]) -> None:
    payload = copy.deepcopy(runs["analyze"])
    nodes = payload["nodes"]
    nodes[0].update(node="exact-node", own_sqnr_db="inf", total_sqnr_db="inf")
    nodes[1].update(node="broken-node", own_sqnr_db=None, total_sqnr_db="-inf")
    shown = _visible(render_html(payload))
    assert "exact (∞)" in shown and "not finite" in shown and "−∞ dB" in shown
    assert shown.index("broken-node") < shown.index(nodes[2]["node"]) < shown.index("exact-node")  # worst first


def _nulls(value: object) -> object:
    """`value` with every leaf replaced by None."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return None


EDITS: dict[str, Callable[[Payload], list[Payload]]] = {
    "as is": lambda p: [p],
    "each key null": lambda p: [{**p, key: None} for key in p if key != "command"],
    "each key missing": lambda p: [{k: v for k, v in p.items() if k != key} for key in p if key != "command"],
    "every leaf null": lambda p: [{**_nulls(p), "command": p["command"]}],
    "lists of junk": lambda p: [{**p, key: [None, 1, "x", [], {}]} for key in p if key != "command"],
}


KINDS = ["pipeline", "search", "quantize", "validate", "benchmark", "analyze", "batch"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.sampled_from(["inf", "-inf"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("edit", list(EDITS))
def test_every_kind_of_payload_renders(runs: dict[str, Payload], kind: str, edit: str) -> None:
    payload = _batch(runs) if kind == "batch" else runs[kind]
    for edited in EDITS[edit](copy.deepcopy(payload)):
        page = render_html(edited)
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")


def test_missing_and_null_values_show_as_a_dash(runs: dict[str, Payload]) -> None:
    payload = copy.deepcopy(runs["pipeline"])
    payload["quantize"]["size"] = {"before_bytes": None}
    del payload["validate"][0]["accuracy"]["fp32_top1"]
    payload["benchmark"][0]["models"][1]["p50_ms"] = None
    shown = _visible(render_html(payload))
    assert "<th>size before</th><td>—</td>" in shown and "<th>size after</th><td>—</td>" in shown
    assert "<th>FP32</th><td>—</td>" in shown and "p50 — ms" in shown
    assert "schema_version —" in _visible(render_html({**payload, "schema_version": None}))


def test_an_unknown_payload_is_shown_as_tables() -> None:
    shown = _visible(render_html({"command": "inspect", "path": "<m>.onnx", "opsets": {"ai.onnx": 17},
                                  "inputs": [{"name": "x", "shape": [1, None]}]}))
    assert "<th>ai.onnx</th><td>17</td>" in shown and "&lt;m&gt;.onnx" in shown and "<td>1, —</td>" in shown
    for odd in ({}, {"command": None}, {"command": ["pipeline"]}, {"command": "pipeline", "quantize": "x"}):
        assert render_html(odd).endswith("</html>\n")


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_value_anywhere_renders(runs: dict[str, Payload], data: st.DataObject) -> None:
    """A few values, at any depth of a real payload, replaced by any JSON."""
    kind = data.draw(st.sampled_from(KINDS))
    payload = copy.deepcopy(_batch(runs) if kind == "batch" else runs[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        node: Any = payload
        while True:
            key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            if isinstance(node[key], dict | list) and node[key] and data.draw(st.booleans()):
                node = node[key]
            else:
                node[key] = data.draw(JSON)
                break
    assert render_html(payload).endswith("</html>\n")
