"""The live page at ``/``: rendered on the server (no build step, no external assets), refreshed by a few lines
of inline JavaScript that fetch the page again and swap its ``#live`` part once the new images have loaded."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any, NamedTuple, Optional

import numpy as np

from edgedet.results import FrameResult, LoopStats


class RoiRect(NamedTuple):
    """A classifier's region of interest on the page: its name ("" for ``model:``) and x, y, width, height as
    fractions of the frame."""

    name: str
    x: float
    y: float
    w: float
    h: float

REFRESH_MS = 1000
CHART_W, CHART_H = 560, 150
COLOURS = {"preprocess": "#2a9d8f", "inference": "#e76f51", "postprocess": "#8d99ae", "total": "#264653"}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#f6f6f4;color:#222}
h1{font-size:18px;margin:0 0 4px}.sub{color:#555;margin-bottom:12px}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0;background:#fff;padding:8px;border:1px solid #ddd}
figcaption{color:#555;font-size:12px;margin-top:4px}
.frame{position:relative;display:inline-block;line-height:0}
.frame img{width:480px;max-width:100%;height:auto}
.roi{position:absolute;border:2px solid #ffd400;box-shadow:0 0 0 1px #000;box-sizing:border-box}
.roi span{background:#ffd400;color:#000;font-size:11px;padding:0 3px}
.input{image-rendering:pixelated;width:288px;height:auto}
table{border-collapse:collapse;background:#fff;border:1px solid #ddd;min-width:280px}
td,th{padding:4px 8px;text-align:left;border-bottom:1px solid #eee}
.bar{height:10px;background:#e76f51;display:block}
.chart{background:#fff;border:1px solid #ddd}
.legend span{margin-right:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
#state{color:#888;font-size:12px}
"""

SCRIPT = """
const wait = (img) => new Promise((done) => {
  if (img.complete) { done(); return; }
  img.onload = img.onerror = () => done();
});
async function refresh() {
  try {
    const reply = await fetch(location.href, {cache: "no-store"});
    if (!reply.ok) throw new Error(reply.status);
    const next = new DOMParser().parseFromString(await reply.text(), "text/html").getElementById("live");
    const images = [...next.querySelectorAll("img")].map((img) => {
      const copy = new Image(); copy.src = img.getAttribute("src"); return copy;
    });
    await Promise.all(images.map(wait));
    document.getElementById("live").replaceWith(next);
    document.getElementById("state").textContent = "live";
  } catch (error) {
    document.getElementById("state").textContent = "not reachable (" + error.message + "), retrying";
  }
  setTimeout(refresh, REFRESH_MS);
}
setTimeout(refresh, REFRESH_MS);
""".replace("REFRESH_MS", str(REFRESH_MS))


def _q(base: str, token_query: str, frame_id: Optional[int]) -> str:
    params = [p for p in (f"frame={frame_id}" if frame_id is not None else "", token_query) if p]
    return base + ("?" + "&amp;".join(escape(p) for p in params) if params else "")


def latency_chart(history: list[tuple[int, tuple[float, ...]]], stages: tuple[str, ...]) -> str:
    """An inline SVG: one line per stage (per-second means, milliseconds) over the history."""
    if len(history) < 2:
        return (f'<svg class="chart" width="{CHART_W}" height="{CHART_H}" role="img"><text x="12" y="24" '
                'fill="#888">collecting latencies...</text></svg>')
    top = max(max(values) for _, values in history) * 1.1 or 1.0
    first, last = history[0][0], history[-1][0]
    span = max(1, last - first)
    left, bottom = 44, CHART_H - 20
    width, height = CHART_W - left - 8, bottom - 8

    # Coordinates with numpy, one "%" format per point: the page is rendered on every poll, 300 points a line.
    seconds = np.array([second for second, _ in history], dtype=np.float64)
    xs = (left + (seconds - first) / span * width).tolist()
    ys = (bottom - np.array([values for _, values in history], dtype=np.float64) / top * height).T.tolist()
    lines = []
    for index, stage in enumerate(stages):
        points = " ".join(map("%.1f,%.1f".__mod__, zip(xs, ys[index])))
        lines.append(f'<polyline fill="none" stroke="{COLOURS.get(stage, "#000")}" stroke-width="1.5" '
                     f'points="{points}"><title>{escape(stage)}</title></polyline>')
    axis = (f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="#999"/>'
            f'<line x1="{left}" y1="8" x2="{left}" y2="{bottom}" stroke="#999"/>'
            f'<text x="4" y="16" font-size="11" fill="#555">{top:.1f} ms</text>'
            f'<text x="4" y="{bottom}" font-size="11" fill="#555">0</text>'
            f'<text x="{left}" y="{CHART_H - 4}" font-size="11" fill="#555">-{span} s</text>'
            f'<text x="{left + width - 24}" y="{CHART_H - 4}" font-size="11" fill="#555">now</text>')
    return (f'<svg class="chart" id="chart" width="{CHART_W}" height="{CHART_H}" role="img" '
            f'aria-label="stage latencies">{axis}{"".join(lines)}</svg>')


def render_page(*, info: dict[str, Any], stats: LoopStats, latest: Optional[FrameResult],
                frame_size: Optional[tuple[int, ...]], rois: Sequence[RoiRect],
                history: list[tuple[int, tuple[float, ...]]], stages: tuple[str, ...], token_query: str) -> str:
    model, runtime, delegate = info.get("model", {}), info.get("runtime", {}), info.get("delegate", {})
    title = f"edgedet · {info.get('device_id', '')}"
    sub = (f"model {model.get('name')} · {runtime.get('name')} {runtime.get('version')} · delegate "
           f"{delegate.get('active')} · {stats.fps_out:.1f} fps · {stats.frames_processed} frames "
           f"({stats.frames_dropped} dropped) · edgedet {info.get('edgedet_version')}")
    if latest is None:
        live = '<div id="live"><p>No frame classified yet.</p></div>'
    else:
        frame_id = latest.frame_id
        roi_box = "".join(
            f'<div class="roi" id="roi{"-" + escape(r.name) if r.name else ""}" '
            f'title="{escape(r.name + ": ") if r.name else ""}preprocess.roi" style="left:{r.x * 100:.2f}%;'
            f'top:{r.y * 100:.2f}%;width:{r.w * 100:.2f}%;height:{r.h * 100:.2f}%">'
            f'{f"<span>{escape(r.name)}</span>" if r.name else ""}</div>' for r in rois)
        size = "×".join(str(v) for v in frame_size) if frame_size else "?"
        shape = model.get("input_shape") or []
        input_size = f"{shape[2]}×{shape[1]}" if len(shape) == 4 else "?"
        rows = "".join(
            f'<tr><td class="label">{escape(c.label)}</td><td>{c.score:.3f}</td>'
            f'<td style="width:140px"><span class="bar" style="width:{max(0.0, min(1.0, c.score)) * 100:.1f}%">'
            f'</span></td></tr>' for c in latest.top_k)
        lat = latest.latency_ms
        timing = " · ".join(f"{s} {lat.get(s, 0.0):.2f} ms" for s in stages)
        legend = "".join(f'<span><i style="background:{COLOURS.get(s, "#000")}"></i>{escape(s)}</span>'
                         for s in stages)
        live = f"""<div id="live">
<div class="row">
<figure><div class="frame"><img id="frame" alt="newest frame"
 src="{_q('frame.jpg', token_query, frame_id)}">{roi_box}</div>
<figcaption>frame {frame_id} · {size}{' · yellow: region of interest' if rois else ''}</figcaption></figure>
<figure><img id="input" class="input" alt="model input" src="{_q('input.png', token_query, frame_id)}">
<figcaption>what the model sees: {input_size} after ROI and resize</figcaption></figure>
<div><table id="scores"><tr><th>label</th><th>score</th><th></th></tr>{rows}</table>
<p class="sub">{timing}</p></div>
</div>
<h2 style="font-size:15px">Stage latency, last {len(history)} s (per-second means)</h2>
<div class="legend">{legend}</div>
{latency_chart(history, stages)}
</div>"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{escape(title)}</h1><div class="sub">{escape(sub)} <span id="state"></span></div>
{live}
<p class="sub"><a href="{_q('metrics', token_query, None)}">/metrics</a> ·
<a href="{_q('api/stats', token_query, None)}">/api/stats</a> ·
<a href="{_q('api/info', token_query, None)}">/api/info</a></p>
<script>{SCRIPT}</script></body></html>
"""
