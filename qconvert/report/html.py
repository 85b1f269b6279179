"""The report as one self-contained HTML page: tables, and charts drawn as inline SVG.

`render_html(payload)` takes the JSON report of any command (its `"command"` says which) and is a
pure function of it: no scripts, fonts, images or clock of its own, so the same payload always
gives the same page and the page opens with no network. Every string from the payload is escaped;
a missing or null value shows as a dash, and a payload of unknown shape is shown as nested tables
rather than refused. The whole payload closes the page, so every number is there.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Callable, Mapping
from pathlib import PurePath

from qconvert.measurement.metrics import nan_lowest
from qconvert.results import human_bytes

DASH = "—"
ANALYZE_TOP = 25  # nodes in the error chart
TENSOR_TOP = 20
WIDTH = 1050  # of the charts, in CSS pixels (they shrink with the page)
COLORS = ("#5b84b1", "#e0803a", "#4f9d5d", "#9a6fbf", "#c39a2c")  # latency rows: the reference first

CSS = """
body{font:14px/1.45 system-ui,"Segoe UI",sans-serif;color:#1f2328;max-width:1100px;margin:0 auto;padding:16px 24px}
h1{font-size:1.4em;margin:.2em 0 .4em;overflow-wrap:anywhere}h3{font-size:1.08em}h4{margin:.8em 0 .3em}
h2{font-size:1.25em;border-bottom:1px solid #d8dee4;margin-top:1.6em}.meta{color:#57606a;font-size:.9em}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.3em 0 .8em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:left;vertical-align:top}thead th{background:#f2f5f8}
.kv>tbody>tr>th{background:#fafbfc;white-space:nowrap}.grid{display:flex;flex-wrap:wrap;gap:0 28px}
td ul{margin:0;padding-left:1.2em}
.badge{display:inline-block;padding:1px 10px;border-radius:10px;font-weight:700;font-size:.85em;background:#eceff2}
.pass{background:#dff3e2;color:#176b2c}.fail{background:#fbe1df;color:#a4221a}.none{color:#6e7781;font-style:italic}
header{border-left:6px solid #adb5bd;padding:8px 16px;background:#f6f8fa}header p{margin:.3em 0}
header.pass{border-color:#2e9e45;color:inherit}header.fail{border-color:#d0362b;color:inherit}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:1em 0}.figures div{border:1px solid #d8dee4;padding:6px 14px}
.figures b{display:block;font-size:1.35em}.figures span{color:#57606a;font-size:.85em}.place{max-width:460px}
.warn{background:#fff8db;border:1px solid #ecd37f;padding:6px 12px}section.model{border-top:3px solid #d8dee4}
.error{background:#fbe9e7;border:1px solid #e8a39c;padding:6px 12px}svg{max-width:100%;height:auto;display:block}
details pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;background:#f6f8fa;padding:8px}
@media print{body{max-width:none;padding:0}svg,tr{break-inside:avoid}*{print-color-adjust:exact}}
"""

Body = Callable[[Mapping[str, object], int], str]  # a payload and its sections' heading level -> HTML


def render_html(payload: Mapping[str, object]) -> str:
    """The whole page for `payload`, the JSON report of any command."""
    source, target = _ends(payload)
    title = " → ".join(_name(e) for e in (source, target) if e is not None) or "report"
    dump = json.dumps(payload, indent=2, default=str)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>qconvert {_text(payload.get('command'))}: {_esc(title)}</title><style>{CSS}</style></head>"
            f"<body>{_header(payload, source, target)}{_body(payload, 2)}"
            f'<details id="payload"><summary>Full JSON report</summary><pre>{_esc(dump)}</pre></details>'
            "</body></html>\n")


# -- values -------------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _m(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _l(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _num(value: object) -> float | None:
    """A number from the payload: ints, floats and the "inf"/"-inf" of decibel fields."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return float(value) if isinstance(value, str) and value in ("inf", "-inf") else None


def _text(value: object, digits: int = 6) -> str:
    """A payload value as escaped text: floats to `digits` significant digits, None as a dash."""
    if value is None or (isinstance(value, str | list | tuple | Mapping) and not value):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("∞" if value > 0 else "−∞")
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return _esc(json.dumps(value, default=str) if isinstance(value, list | tuple | Mapping) else value)


def _code(value: object) -> str:
    return f"<code>{_text(value)}</code>"


def _pct(value: object) -> str:
    share = _num(value)
    return DASH if share is None else f"{_text(share * 100, 4)} %"


def _db(value: object) -> str:
    level = _num(value)
    return DASH if level is None else ("exact (∞)" if level == math.inf else f"{_text(level, 4)} dB")


def _times(value: object) -> str:
    return DASH if _num(value) is None else f"×{_text(value, 4)}"


def _bytes(value: object) -> str:
    size = _num(value)
    if size is None or not math.isfinite(size):
        return DASH
    return f"{human_bytes(size)} ({size:,.0f} bytes)"


def _name(path: object) -> str:
    """A file's name, for labels (the tables show the full path)."""
    return DASH if path is None else PurePath(str(path)).name or str(path)


def _short(text: str, limit: int) -> str:
    """The end of `text` (where node and file names differ) within `limit` characters."""
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


# -- building blocks ------------------------------------------------------------------------------

def _table(headers: list[str], rows: list[list[str]], empty: str = "none") -> str:
    """Headers and cells are HTML already."""
    if not rows:
        return f'<p class="none">{empty}</p>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _value(value: object, depth: int = 0) -> str:
    """Any JSON value: objects as key/value tables, lists of objects as tables, deep ones as JSON."""
    if isinstance(value, Mapping) and value and depth < 8:
        return _kv([(_esc(k), _value(v, depth + 1)) for k, v in value.items()])
    if isinstance(value, list | tuple) and value and depth < 8:
        if all(isinstance(v, Mapping) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in _m(v)))
            return _table([_esc(c) for c in columns],
                          [[_value(_m(v).get(c), depth + 1) for c in columns] for v in value])
        return ", ".join(_value(v, depth + 1) for v in value)
    return _text(value)


def _section(level: int, title: str, *parts: str) -> str:
    h = min(level, 6)
    return f"<section><h{h}>{title}</h{h}>{''.join(parts)}</section>"


def _grid(*cards: tuple[str, str]) -> str:
    """Small tables side by side, each under its title."""
    return '<div class="grid">' + "".join(f"<div><h4>{t}</h4>{c}</div>" for t, c in cards if c) + "</div>"


def _badge(passed: object, *, yes: str = "PASSED", no: str = "GATE MISSED", other: str = "NO GATES") -> str:
    if passed is True:
        return f'<span class="badge pass">{yes}</span>'
    return f'<span class="badge fail">{no}</span>' if passed is False else f'<span class="badge">{other}</span>'


def _mark(passed: object) -> str:
    return _badge(passed, yes="✔ pass", no="✘ fail", other=DASH)


def _warnings(items: list[object]) -> str:
    found = "".join(f"<li>{_text(w)}</li>" for w in items if w)
    return f'<div class="warn"><strong>Warnings</strong><ul>{found}</ul></div>' if found else ""


def _relation(gate: Mapping[str, object]) -> str:
    return f"{'≤' if str(gate.get('name') or '').startswith('max') else '≥'} {_text(gate.get('threshold'))}"


def _gates(gates: object) -> str:
    rows = [[_text(g.get("name")), _text(g.get("output")), _text(g.get("value")), _relation(g), _mark(g.get("passed"))]
            for g in map(_m, _l(gates))]
    return _table(["gate", "output", "value", "threshold", "result"], rows, "no gates set")


def _missed(gates: object) -> str:
    """The gates missed, one line each."""
    lines = []
    for gate in map(_m, _l(gates)):
        if gate.get("passed") is False:
            where = f" ({_text(gate.get('output'))})" if gate.get("output") else ""
            lines.append(f"<li>{_text(gate.get('name'))}{where}: {_text(gate.get('value'), 4)} misses "
                         f"{_relation(gate)}</li>")
    return f"<ul>{''.join(lines)}</ul>" if lines else ""


def _svg(height: float, label: str, body: str) -> str:
    return (f'<svg role="img" aria-label="{_esc(label)}" viewBox="0 0 {WIDTH} {height:.0f}" '
            f'width="{WIDTH}" height="{height:.0f}">{body}</svg>')


def _ticks(top: float) -> list[float]:
    """Round axis ticks from 0 to at least `top` (> 0)."""
    raw = max(top, 1e-9) / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(f * magnitude for f in (1, 2, 5, 10) if f * magnitude >= raw)
    return [i * step for i in range(max(math.ceil(top / step - 1e-9), 1) + 1)]


def _axis(ticks: list[float], x: Callable[[float], float], top: float, bottom: float, unit: str) -> str:
    lines = "".join(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}" stroke="#e6e9ed"/>'
                    f'<text x="{x(t):.1f}" y="{bottom + 14}" font-size="11" text-anchor="middle" '
                    f'fill="#57606a">{t:g}</text>' for t in ticks)
    return lines + (f'<text x="{x(ticks[-1]):.1f}" y="{bottom + 28}" font-size="11" text-anchor="end" '
                    f'fill="#57606a">{_esc(unit)}</text>')


# -- charts -------------------------------------------------------------------------------------

def _latency_plot(models: list[Mapping[str, object]]) -> str:
    """Every timed run of each model as a dot (spread vertically) over a box from its quartiles,
    whiskers to its extremes; the axis starts at zero so the gap between rows is the speedup."""
    runs = [[v for v in map(_num, _l(m.get("samples_ms"))) if v is not None and 0 <= v < math.inf] for m in models]
    longest = max((max(r) for r in runs if r), default=0.0)
    if longest <= 0:
        return '<p class="none">no timed runs to plot</p>'
    ticks, left, row, pad = _ticks(longest), 220, 58, 8

    def x(value: float) -> float:
        return left + value / ticks[-1] * (WIDTH - left - 24)

    parts = [_axis(ticks, x, pad, pad + row * len(models), "ms per batch")]
    for i, (model, samples) in enumerate(zip(models, runs, strict=True)):
        color, y = COLORS[i % len(COLORS)], pad + row * i + row / 2
        parts.append(f'<text x="{left - 12}" y="{y - 3:.1f}" font-size="13" text-anchor="end" fill="#1f2328">'
                     f'<title>{_esc(model.get("path"))}</title>{_esc(_short(_name(model.get("path")), 30))}</text>'
                     f'<text x="{left - 12}" y="{y + 13:.1f}" font-size="11" text-anchor="end" fill="#57606a">'
                     f'p50 {_text(model.get("p50_ms"), 4)} ms · {_times(model.get("speedup_vs_first"))}</text>')
        if not samples:
            parts.append(f'<text x="{left + 6}" y="{y + 4:.1f}" font-size="11" fill="#6e7781">no samples</text>')
            continue
        ordered = sorted(samples)
        q1, q2, q3 = statistics.quantiles(ordered, method="inclusive") if len(ordered) > 1 else ordered * 3
        parts.append(f'<line x1="{x(ordered[0]):.1f}" x2="{x(ordered[-1]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{color}"/><rect x="{x(q1):.1f}" y="{y - 12:.1f}" width="{max(x(q3) - x(q1), 1):.1f}" '
                     f'height="24" fill="{color}" fill-opacity="0.18" stroke="{color}"/>')
        parts += [f'<circle cx="{x(v):.1f}" cy="{y + ((k * 0.618034) % 1 - 0.5) * 34:.1f}" r="2.4" '
                  f'fill="{color}" fill-opacity="0.65"/>' for k, v in enumerate(samples)]
        parts.append(f'<line x1="{x(q2):.1f}" x2="{x(q2):.1f}" y1="{y - 16:.1f}" y2="{y + 16:.1f}" '
                     f'stroke="#1f2328" stroke-width="2.5"><title>median {q2:.4g} ms</title></line>')
    return _svg(pad + row * len(models) + 34, "latency of every run, per model", "".join(parts))


def _placement(value: object) -> str:
    """Nodes on the provider (green) against nodes left to the CPU provider, as one bar."""
    place = _m(value)
    if not place:
        return ""
    nodes, on = _num(place.get("nodes")) or 0.0, _num(place.get("nodes_on_provider")) or 0.0
    share = min(max(on / nodes, 0.0), 1.0) if nodes > 0 else 0.0
    bar = (f'<div class="place"><svg role="img" aria-label="provider placement" viewBox="0 0 360 16" width="360" '
           f'height="16"><rect width="360" height="16" fill="{"#d0362b" if place.get("all_on_cpu") else "#c9ced4"}"/>'
           f'<rect width="{360 * share:.1f}" height="16" fill="#2e9e45"/></svg>')
    cpu = ", ".join(f"{_esc(op)} ×{_text(n)}" for op, n in _m(place.get("cpu_op_types")).items())
    fell = " <strong>Everything fell back to the CPU: these are CPU figures.</strong>" * bool(place.get("all_on_cpu"))
    return (f"{bar}<p>{_text(place.get('nodes_on_provider'))} of {_text(place.get('nodes'))} nodes on "
            f"{_code(place.get('provider'))} ({_pct(place.get('share'))}); quantized nodes "
            f"{_text(place.get('quantized_on_provider'))} of {_text(place.get('quantized_nodes'))}; "
            f"left to the CPU: {cpu or DASH}.{fell}</p></div>")


def _severity(node: Mapping[str, object]) -> float:
    """Sort key, worst first: a broken (null) SQNR before any number, exact (inf) last."""
    level = _num(node.get("own_sqnr_db"))
    return nan_lowest(math.nan if level is None else level)


def _error_chart(nodes: list[Mapping[str, object]]) -> str:
    """Each node's own SQNR as a bar (shorter = worse, worst on top) and its total SQNR as a tick."""
    levels = [_num(n.get(k)) for n in nodes for k in ("own_sqnr_db", "total_sqnr_db")]
    ticks = _ticks(max((v for v in levels if v is not None and 0 < v < math.inf), default=1.0))
    left, span, row, pad = 400, 370, 20, 6

    def x(value: float) -> float:
        return left + min(max(value, 0.0), ticks[-1]) / ticks[-1] * span

    parts = [_axis(ticks, x, pad, pad + row * len(nodes), "SQNR (dB)")]
    for i, node in enumerate(nodes):
        y, name = pad + row * i, str(node.get("node") or DASH)
        own, total = _num(node.get("own_sqnr_db")), _num(node.get("total_sqnr_db"))
        parts.append(f'<text x="2" y="{y + 14}" font-size="11" fill="#57606a">'
                     f'{_esc(_short(str(node.get("op_type") or DASH), 19))}</text>'
                     f'<text x="{left - 8}" y="{y + 14}" font-size="11.5" text-anchor="end" fill="#1f2328">'
                     f"<title>{_esc(name)}</title>{_esc(_short(name, 42))}</text>")
        if own is None:
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{span}" height="{row - 6}" fill="#fbe1df"/>'
                         f'<text x="{left + 6}" y="{y + 14}" font-size="11" fill="#a4221a">not finite</text>')
        else:
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{x(own) - left:.1f}" height="{row - 6}" '
                         f'fill="{"#e0803a" if i < 3 else "#f0b27a"}"/>')
        if total is not None:
            parts.append(f'<line x1="{x(total):.1f}" x2="{x(total):.1f}" y1="{y + 1}" y2="{y + row - 1}" '
                         'stroke="#1f2328" stroke-width="2"/>')
        parts.append(f'<text x="{left + span + 10}" y="{y + 14}" font-size="11" fill="#1f2328">{_db(own)} · '
                     f'total {_db(total)} · {_pct(node.get("carried_share"))} carried</text>')
    return _svg(pad + row * len(nodes) + 34, "per-node error ranking", "".join(parts))


# -- sections -------------------------------------------------------------------------------------

def _configuration(job: Mapping[str, object], resolved: object, level: int) -> str:
    """The job with its quantize options as resolved (mode chosen, presets applied)."""
    shown = {**job, "quantize": resolved or job.get("quantize")}
    nested = [(_esc(k), _value(v)) for k, v in shown.items() if isinstance(v, Mapping | list) and v]
    plain = [(_esc(k), _value(v)) for k, v in shown.items() if not (isinstance(v, Mapping | list) and v)]
    return _section(level, "Configuration", _grid(("run", _kv(plain) if plain else ""), *nested))


def _quantize(q: Mapping[str, object], level: int) -> str:
    size, nodes, calibration = _m(q.get("size")), _m(q.get("nodes")), _m(q.get("calibration"))
    skipped = [_m(s) for s in _l(q.get("skipped"))]
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[str(s.get("reason"))] = reasons.get(str(s.get("reason")), 0) + 1
    listed = _table(["node", "op type", "graph", "reason"], [[_code(s.get("name")), _text(s.get("op_type")),
                    _text(s.get("graph")), _text(s.get("reason"))] for s in skipped])
    return _section(
        level, "Quantization",
        '<div class="warn">Smoke run: synthetic calibration data, so accuracy means nothing.</div>' * bool(
            q.get("smoke_run")),
        _warnings([*_l(q.get("warnings")), *_l(_m(q.get("preprocess")).get("warnings"))]),
        _grid(("Result", _kv([
            ("size before", _bytes(size.get("before_bytes"))), ("size after", _bytes(size.get("after_bytes"))),
            ("size ratio", _times(size.get("ratio"))),
            ("nodes quantized", f"{_text(nodes.get('quantized'))} of {_text(nodes.get('candidates'))} candidates"),
            ("mode", f"{_text(q.get('mode'))} ({_text(q.get('mode_reason'))})"),
            ("calibration", f"{_text(calibration.get('samples'))} samples from {_code(calibration.get('source'))}"),
            ("time (s)", _value(q.get("time_seconds")))])),
              ("Op types", _table(["op type", "quantized", "candidates"], [
                  [_text(op), _text(_m(c).get("quantized")), _text(_m(c).get("candidates"))]
                  for op, c in _m(q.get("op_types")).items()])),
              ("Weights by role", _weights(q.get("weights")) if _l(q.get("weights")) else ""),
              ("Skipped nodes", _table(["reason", "nodes"], [[_text(r), str(n)] for r, n in reasons.items()],
                                       "no node skipped")
               + (f"<details><summary>the {len(skipped)} node(s)</summary>{listed}</details>" if skipped else "")),
              ("Pre-processing", _value(_m(q.get("preprocess")).get("passes")))))


def _language(v: Mapping[str, object], level: int) -> str:
    """A language model compared on text: perplexity, KL, next-token and generation agreement."""
    lm, data = _m(v.get("language")), _m(v.get("data"))
    config = _m(lm.get("config"))
    return _section(
        level, f"Language model on {_text(_m(v.get('ep')).get('provider'))} {_badge(v.get('passed'))}",
        _table(["FP32 perplexity", "perplexity", "ratio", "KL (nats/token)", "top-1 agreement",
                "generation agreement", "identical generations", "non-finite"],
               [[_text(lm.get("reference_perplexity")), _text(lm.get("candidate_perplexity")),
                 _times(lm.get("perplexity_ratio")), _text(lm.get("kl_divergence")), _pct(lm.get("top1_agreement")),
                 _pct(lm.get("generation_agreement")),
                 f"{_text(lm.get('identical_generations'))} of {_text(lm.get('prompts'))}",
                 _text(lm.get("non_finite_positions"))]]),
        _grid(("Models", _kv([("FP32", _code(v.get("fp32"))), ("quantized", _code(v.get("quantized"))), (
                  "text", f"{_text(lm.get('tokens'))} tokens scored of {_code(data.get('text') or data.get('tokens'))}"
                          f", {_text(lm.get('windows'))} windows of {_text(config.get('context'))} (stride "
                          f"{_text(config.get('stride'))})")])),
              ("Gates", _gates(v.get("gates"))), ("Provider placement", _placement(v.get("placement")))))


def _decoding(b: Mapping[str, object], level: int) -> str:
    """Generation speed of decoders: prefill latency and decode tokens/s, interleaved."""
    rows = [[_code(d.get("path")), _text(d.get("prefill_ms"), 4), _times(d.get("prefill_speedup")),
             _text(d.get("decode_tokens_per_s"), 4), _times(d.get("decode_speedup")), _bytes(d.get("rss_growth_bytes"))]
            for d in map(_m, _l(b.get("decoding")))]
    decode = _m(_m(b.get("config")).get("decode"))
    return _section(
        level, f"Generation on {_text(b.get('provider'))} {_badge(b.get('passed')) if _l(b.get('gates')) else ''}",
        f'<p class="meta">{_text(decode.get("prompt_tokens"))}-token prompt in one call, then '
        f'{_text(decode.get("new_tokens"))} tokens one by one through the KV cache; medians of '
        f'{_text(decode.get("rounds"))} rounds, every model in each; ratios are against the first model.</p>',
        _table(["model", "prefill ms", "prefill speedup", "decode tokens/s", "decode speedup", "memory"], rows,
               "no model timed"),
        _grid(("Gates", _gates(b.get("gates")) if _l(b.get("gates")) else "")))


def _weight_search(w: Mapping[str, object], level: int) -> str:
    trials = [[_text(t.get("index")), _text(t.get("eight_bit")), _bytes(t.get("file_bytes")),
               _times(t.get("perplexity_ratio")), _pct(t.get("top1_agreement")), _mark(t.get("passed"))]
              for t in map(_m, _l(w.get("trials")))]
    ranked = [[_text(r.get("rank")), _code(", ".join(map(str, _l(r.get("nodes"))))), _text(r.get("role")),
               _text(r.get("kl")), _bytes(r.get("extra_bytes")), _mark(r.get("eight_bit"))]
              for r in map(_m, _l(w.get("ranking")))]
    return _section(
        level, f"Weight search {_badge(w.get('met'), yes='TARGET MET', no='TARGET MISSED', other=DASH)}",
        _table(["trial", "8-bit weights", "size", "perplexity ratio", "top-1 agreement", "met"], trials, "no trials"),
        f"<details><summary>every weight, the most costly at 4 bits per byte of 8 bits first</summary>"
        f"{_table(['rank', 'weight', 'role', 'KL with only it at 4 bits', '8 bits cost', '8-bit'], ranked)}</details>")


def _weights(weights: object) -> str:
    """Weight-only: parameters and stored bytes per role and width."""
    rows: dict[tuple[str, str], list[int]] = {}
    for w in map(_m, _l(weights)):
        width = "float" if w.get("bits") is None else f"{w.get('bits')}-bit"
        row = rows.setdefault((str(w.get("role")), width), [0, 0, 0])
        for i, key in enumerate(("node", "params", "stored_bytes")):
            value = w.get(key)
            row[i] += 1 if key == "node" else value if isinstance(value, int) else 0
    return _table(["role", "width", "nodes", "parameters", "stored"], [
        [_esc(role), _esc(width), str(n), f"{params:,}", _bytes(stored)]
        for (role, width), (n, params, stored) in sorted(rows.items())])


def _validate(v: Mapping[str, object], level: int) -> str:
    if v.get("language"):
        return _language(v, level)
    outputs = [[_code(o.get("name")), _text(o.get("samples")), _text(o.get("mean_cosine")),
                f"{_text(o.get('worst_cosine'))} (sample {_text(o.get('worst_sample'))})", _db(o.get("sqnr_db")),
                _text(o.get("max_abs_error")), _text(o.get("mean_abs_error")), _pct(o.get("top1_agreement")),
                _text(o.get("non_finite"))] for o in map(_m, _l(v.get("outputs")))]
    accuracy = _m(v.get("accuracy"))
    return _section(
        level, f"Accuracy on {_text(_m(v.get('ep')).get('provider'))} {_badge(v.get('passed'))}",
        _table(["output", "samples", "mean cosine", "worst cosine", "SQNR", "max abs error", "mean abs error",
                "top-1 agreement", "non-finite"], outputs, "no output compared"),
        _grid(("Models", _kv([("FP32", _code(v.get("fp32"))), ("quantized", _code(v.get("quantized"))), (
                  "data", f"{_text(v.get('samples'))} samples from {_code(_m(v.get('data')).get('source'))}")])),
              ("Top-1 accuracy", _kv([
                  ("FP32", _pct(accuracy.get("fp32_top1"))), ("quantized", _pct(accuracy.get("quantized_top1"))),
                  ("drop (points)", _text(accuracy.get("drop_points")))]) if accuracy else ""),
              ("Gates", _gates(v.get("gates"))), ("Provider placement", _placement(v.get("placement")))))


def _benchmark(b: Mapping[str, object], level: int) -> str:
    if _l(b.get("decoding")):
        return _decoding(b, level)
    models, config, gates = [_m(m) for m in _l(b.get("models"))], _m(b.get("config")), _l(b.get("gates"))
    rows = [[_code(m.get("path")), _text(m.get("runs")), *(_text(m.get(k), 4) for k in (
             "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms")), _text(m.get("throughput_per_s")),
             _times(m.get("speedup_vs_first"))] for m in models]
    fell = _l(b.get("fell_back_to_cpu"))
    return _section(
        level, f"Latency on {_text(b.get('provider'))} {_badge(b.get('passed')) if gates else ''}",
        f'<p class="meta">{_text(config.get("runs"))} runs after {_text(config.get("warmup"))} warm-up, batch of '
        f'{_text(config.get("batch"))}, {_text(_m(config.get("ep")).get("threads"))} thread(s); box: quartiles, '
        "bar: median, dots: every run; speedup is against the first model.</p>",
        _latency_plot(models),
        _table(["model", "runs", "mean ms", "p50 ms", "p90 ms", "p99 ms", "min ms", "per second", "speedup"],
               rows, "no model timed"),
        _warnings([*([f"fell back to the CPU provider: {', '.join(map(str, fell))}"] if fell else []),
                   *_l(b.get("warnings"))]),
        _grid(*((f"Placement of {_code(_name(m.get('path')))}", _placement(m.get("placement"))) for m in models),
              ("Gates", _gates(gates) if gates else "")))


def _search(s: Mapping[str, object], level: int) -> str:
    chosen = s.get("chosen_trial")
    trials = [[f"{_text(t.get('index'))}{' ★ written' if t.get('index') == chosen else ''}",
               _text(t.get("sensitive_nodes")), _text(t.get("handling")), _text(t.get("worst_cosine")),
               _db(t.get("sqnr_db")), _text(t.get("accuracy_drop")), _text(t.get("p50_ms"), 4),
               _times(t.get("speedup_vs_fp32")), _mark(t.get("passed"))] for t in map(_m, _l(s.get("trials")))]
    kept = [[_code(k.get("node")), _text(k.get("op_type")), _text(k.get("rank")), _db(k.get("own_sqnr_db")),
             _db(k.get("total_sqnr_db"))] for k in map(_m, _l(s.get("sensitive_nodes")))]
    return _section(
        level, f"Accuracy search {_badge(s.get('met'), yes='TARGET MET', no='TARGET MISSED', other=DASH)}",
        _warnings(_l(s.get("notes"))),
        _table(["trial", "kept nodes", "handling", "worst cosine", "SQNR", "drop (points)", "p50 ms", "speedup",
                "met"], trials, "no trials"),
        _grid(("Target", _value(_m(s.get("config")).get("target"))),
              ("Search", _kv([("nodes ranked", _text(s.get("ranked_nodes"))),
                              ("FP32 p50 (ms)", _text(s.get("fp32_p50_ms"), 4))])),
              ("Sensitive nodes kept", _table(["node", "op type", "rank", "own SQNR", "total SQNR"], kept,
                                              "none: every candidate quantized"))))


def _analyze(a: Mapping[str, object], level: int) -> str:
    nodes = sorted((_m(n) for n in _l(a.get("nodes"))), key=_severity)[:ANALYZE_TOP]
    tensors = [[_code(t.get("name")), _text(t.get("kind")), _db(t.get("sqnr_db")), _text(t.get("cosine"))]
               for t in map(_m, _l(a.get("tensors"))[:TENSOR_TOP])]
    return _section(
        level, "Per-node error ranking",
        f'<p class="meta">{_text(a.get("ranked_nodes"))} nodes ranked on {_text(a.get("samples"))} samples '
        f'({_text(a.get("matched_tensors"))} of {_text(a.get("quantized_tensors"))} quantized tensors matched, '
        f"names {_text(a.get('reference'))}); the worst {len(nodes)} here. Bar: the node's own SQNR, from FP32 "
        "inputs (shorter is worse); tick: the total SQNR at its output in the quantized model; carried: the "
        "share of that noise from upstream.</p>",
        _error_chart(nodes) if nodes else '<p class="none">no node ranked</p>',
        f"<h4>Worst tensors (top {TENSOR_TOP})</h4>", _table(["tensor", "kind", "SQNR", "cosine"], tensors))


# -- pages ----------------------------------------------------------------------------------------

def _figures(p: Mapping[str, object]) -> str:
    """The pipeline's headline numbers, one tile each."""
    q = _m(p.get("quantize"))
    tiles = [(_times(_m(q.get("size")).get("ratio")), "size ratio (FP32 / quantized)"),
             (f"{_text(_m(q.get('nodes')).get('quantized'))} / {_text(_m(q.get('nodes')).get('candidates'))}",
              "nodes quantized")]
    for v in map(_m, _l(p.get("validate"))):
        where = _text(_m(v.get("ep")).get("provider"))
        drop = _m(v.get("accuracy")).get("drop_points")
        cosines = [_num(_m(o).get("mean_cosine")) for o in _l(v.get("outputs"))]
        worst = min((c for c in cosines if c is not None), default=None)
        tiles.append((_text(drop), f"top-1 drop (points) on {where}") if drop is not None else
                     (_text(worst), f"worst mean cosine on {where}"))
    for b in map(_m, _l(p.get("benchmark"))):
        last = _m((_l(b.get("models")) or [None])[-1])
        tiles.append((_times(last.get("speedup_vs_first")), f"speedup on {_text(b.get('provider'))}"))
    return '<div class="figures">' + "".join(f"<div><b>{v}</b><span>{t}</span></div>" for v, t in tiles) + "</div>"


def _pipeline(p: Mapping[str, object], level: int) -> str:
    q = _m(p.get("quantize"))
    return "".join([
        _figures(p), _quantize(q, level), _search(_m(p.get("search")), level) if p.get("search") else "",
        _weight_search(_m(p.get("weight_search")), level) if p.get("weight_search") else "",
        *(_validate(_m(v), level) for v in _l(p.get("validate"))),
        *(_benchmark(_m(b), level) for b in _l(p.get("benchmark"))),
        _analyze(_m(p.get("analyze")), level) if p.get("analyze") else "",
        _configuration(_m(p.get("job")), q.get("config"), level)])


def _batch(p: Mapping[str, object], level: int) -> str:
    items = [_m(i) for i in _l(p.get("models"))]
    status = {"passed": _badge(True), "missed": _badge(False), "failed": _badge(False, no="FAILED")}

    def outcome(item: Mapping[str, object]) -> str:
        error = _m(item.get("error"))
        return _text(error.get("message")) if error else _missed(_m(item.get("result")).get("gates"))

    rows = [[f'<a href="#model-{n}">{_text(_name(i.get("model")))}</a>', _code(i.get("output")),
             status.get(str(i.get("status")), _text(i.get("status"))), _text(i.get("seconds"), 4),
             _code(i.get("worker")), _text(i.get("waited_seconds"), 4), outcome(i)]
            for n, i in enumerate(items, 1)]
    warned = _warnings(_l(p.get("warnings")))
    parts = [_section(level, "Models", _kv([(_esc(k), _text(v)) for k, v in _m(p.get("counts")).items()] + [
        ("workers", _text(p.get("workers"))), ("executor", _text(p.get("executor"))),
        ("seconds", _text(p.get("seconds"), 4))]) + warned,
        _table(["model", "output", "status", "seconds", "worker", "waited (s)", "error or missed gates"], rows,
               "no models"))]
    for n, item in enumerate(items, 1):
        error, h = _m(item.get("error")), min(level, 6)
        failure = (f'<div class="error"><strong>{_text(error.get("error"))}</strong>: {_text(error.get("message"))}'
                   f"<ul>{''.join(f'<li>{_text(d)}</li>' for d in _l(error.get('details')))}</ul>"
                   f"hint: {_text(error.get('hint'))} · exit code {_text(error.get('exit_code'))}</div>"
                   ) if error else ""
        parts.append(f'<section class="model" id="model-{n}"><h{h}>{n}. {_code(item.get("model"))} → '
                     f"{_code(item.get('output'))} {status.get(str(item.get('status')), '')}</h{h}>{failure}"
                     f"{_body(_m(item.get('result')), level + 1) if item.get('result') else ''}</section>")
    return "".join(parts)


def _body(p: Mapping[str, object], level: int) -> str:
    command = p.get("command")
    bodies: dict[object, Body] = {
        "pipeline": _pipeline, "batch": _batch, "validate": _validate, "benchmark": _benchmark, "analyze": _analyze,
        "quantize": lambda q, n: _quantize(q, n) + _configuration({}, q.get("config"), n)}
    return bodies.get(command if isinstance(command, str) else "", _generic)(p, level)


def _generic(p: Mapping[str, object], level: int) -> str:
    return _section(level, "Contents", _value(p))


def _ends(p: Mapping[str, object]) -> tuple[object, object]:
    """What the report is about: a model and what became of it."""
    command, q = p.get("command"), _m(p.get("quantize"))
    paths = [_m(m).get("path") for m in _l(p.get("models"))]
    ends: dict[object, tuple[object, object]] = {
        "pipeline": (_m(p.get("job")).get("model") or q.get("input"), q.get("output")),
        "quantize": (p.get("input"), p.get("output")), "validate": (p.get("fp32"), p.get("quantized")),
        "analyze": (p.get("fp32"), p.get("quantized")),
        "benchmark": (paths[0] if paths else None, paths[-1] if len(paths) > 1 else None),
        "batch": (f"{len(paths)} models", None)}
    return ends.get(command if isinstance(command, str) else "", (None, None))


def _header(p: Mapping[str, object], source: object, target: object) -> str:
    passed = p.get("passed")
    versions = " · ".join(f"{_esc(k)} {_text(v)}" for k, v in _m(p.get("versions")).items())
    ends = " → ".join(_code(e) for e in (source, target) if e is not None)
    return (f'<header class="{"pass" if passed is True else "fail" if passed is False else ""}">'
            f"<h1>qconvert {_text(p.get('command'))}{': ' + ends if ends else ''}</h1><p>{_badge(passed)}</p>"
            f"{_missed(p.get('gates'))}"
            f'<p class="meta">schema_version {_text(p.get("schema_version"))} · {versions or "versions —"}</p>'
            "</header>")
