"""`speedprofile map`: choropleth of estimated speeds — a static PNG (one panel per --at time) or one
self-contained offline HTML page with a time-of-week slider and hover details.

Grain drawn: one directed segment (offset to its right-hand side so both directions show) coloured by its
speed_kph at a local time-of-week bucket (Sunday 00:00 = 0). Colours: viridis, slow = dark purple, fast = yellow.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.bucketed_traversals import N_BUCKETS
from schemas.speed_estimates import SOURCES
from speedprofile.errors import UserError
from speedprofile.serve.timeofweek import format_bucket, parse_many

DEFAULT_AT = ("Fri 08:00",)
CMAP = "viridis"
HTML_CELL_BUDGET = 2_000_000  # segments x slider steps embedded in one page (~7 bytes each)
STEP_CHOICES = (1, 3, 6, 12, 24, 36, 72)  # slider step in 5-minute buckets
AXES_COLOUR = "#f7f7f2"  # map background (PNG axes and HTML canvas)
MISSING_COLOUR = "#b4b4b4"  # segments without an estimate at that time
_WIDTH = {"motorway": 2.4, "trunk": 2.2, "primary": 1.8, "secondary": 1.5, "tertiary": 1.2}


def _network(warehouse: str, partitions: Sequence[str] | None) -> pd.DataFrame:
    from speedprofile.serve.data import load_segments

    segs = load_segments(warehouse, partitions,
                         ["segment_id", "name", "road_class", "length_m", "geom_lon_deg", "geom_lat_deg", "partition"])
    if segs.empty:
        raise UserError(f"no road segments to draw in {warehouse}")
    return segs.reset_index(drop=True)


def _grid(warehouse: str, segs: pd.DataFrame, buckets: Sequence[int], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """(segment x bucket) arrays of the requested estimate columns (NaN where no estimate)."""
    from speedprofile.serve.data import estimate_partitions, load_estimates

    parts = sorted(set(segs["partition"]) & set(estimate_partitions(warehouse)))
    est = load_estimates(warehouse, parts, buckets=buckets, columns=["segment_id", "tow_bucket", *columns])
    row_of = pd.Series(np.arange(len(segs)), index=segs["segment_id"].to_numpy())
    col_of = {int(b): i for i, b in enumerate(buckets)}
    r = row_of.reindex(est["segment_id"].to_numpy()).to_numpy()
    keep = ~np.isnan(r)
    r = r[keep].astype(int)
    c = est["tow_bucket"].to_numpy()[keep].astype(int)
    c = np.array([col_of[b] for b in c], dtype=int)
    out = {}
    for name in columns:
        vals = est[name].to_numpy()[keep]
        if name == "source":
            grid = np.full((len(segs), len(buckets)), -1, dtype=np.int16)
            grid[r, c] = pd.Series(vals).map({s: i for i, s in enumerate(SOURCES)}).fillna(-1).to_numpy()
        else:
            grid = np.full((len(segs), len(buckets)), np.nan)
            grid[r, c] = pd.to_numeric(pd.Series(vals), errors="coerce").to_numpy(dtype=float)
        out[name] = grid
    out["_unmatched"] = np.array(int((~keep).sum()))
    return out


def _projected_lines(segs: pd.DataFrame, offset: float) -> tuple[list[np.ndarray], float]:
    """Polylines in local x/y (lon scaled by cos(lat0)), shifted `offset` (fraction of extent) to the right."""
    lat0 = float(np.nanmean(np.concatenate(segs["geom_lat_deg"].to_numpy())))
    k = math.cos(math.radians(lat0))
    lines = [np.column_stack([np.asarray(lo, float) * k, np.asarray(la, float)])
             for lo, la in zip(segs["geom_lon_deg"], segs["geom_lat_deg"], strict=True)]
    allpts = np.concatenate(lines)
    d = offset * float(max(np.ptp(allpts[:, 0]), np.ptp(allpts[:, 1]), 1e-4))
    shifted = []
    for p in lines:
        if len(p) < 2:
            shifted.append(p)
            continue
        e = np.diff(p, axis=0)
        n = np.column_stack([e[:, 1], -e[:, 0]])  # right-hand normal of each edge
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        vn = np.vstack([n[:1], (n[:-1] + n[1:]) / 2, n[-1:]])
        shifted.append(p + d * vn)
    return shifted, k


def _vmax(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(max(10.0, math.ceil(np.percentile(finite, 98) / 10) * 10)) if finite.size else 60.0


def render_png(warehouse: str, out: str | Path, at: Sequence[str] | str | None = None,
               partitions: Sequence[str] | None = None) -> Path:
    """Static choropleth PNG: one panel per time of week, shared viridis scale (km/h), slow = dark purple."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    buckets = parse_many(at, list(DEFAULT_AT))
    segs = _network(warehouse, partitions)
    grid = _grid(warehouse, segs, buckets, ["speed_kph"])["speed_kph"]
    lines, _ = _projected_lines(segs, 0.0005)
    pts = np.concatenate(lines)
    aspect = float(np.ptp(pts[:, 0]) / max(np.ptp(pts[:, 1]), 1e-9))
    widths = segs["road_class"].map(_WIDTH).fillna(0.8).to_numpy()
    norm = matplotlib.colors.Normalize(0, _vmax(grid))
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad=MISSING_COLOUR)
    n = len(buckets)
    panel_w = float(np.clip(7.0 * aspect, 4.5, 11.0))
    fig, axes = plt.subplots(1, n, figsize=(panel_w * n + 1.5, 8.0), squeeze=False, layout="constrained")
    for ax, b, col in zip(axes[0], buckets, grid.T, strict=True):
        order = np.argsort(np.nan_to_num(-col, nan=1.0))  # slow roads drawn last (on top)
        lc = LineCollection([lines[i] for i in order], linewidths=widths[order], cmap=cmap, norm=norm,
                            capstyle="round")
        lc.set_array(np.ma.masked_invalid(col[order]))
        ax.add_collection(lc)
        ax.autoscale_view()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor(AXES_COLOUR)
        observed = np.isfinite(col).sum()
        ax.set_title(f"{format_bucket(b)} local\n{observed:,} of {len(col):,} segments with an estimate", fontsize=10)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), shrink=0.8,
                 label="expected speed (km/h)")
    fig.suptitle("speedprofile — expected speed by time of week")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def html_step(n_segments: int) -> int:
    """Slider step (in 5-minute buckets) keeping segments x steps within HTML_CELL_BUDGET."""
    for step in STEP_CHOICES:
        if n_segments * math.ceil(N_BUCKETS / step) <= HTML_CELL_BUDGET:
            return step
    return STEP_CHOICES[-1]


def render_html(warehouse: str, out: str | Path, at: Sequence[str] | str | None = None,
                partitions: Sequence[str] | None = None) -> Path:
    """One self-contained HTML page (inline data, script and style; no network) with a time-of-week slider."""
    import matplotlib

    start = parse_many(at, list(DEFAULT_AT))[0]
    segs = _network(warehouse, partitions)
    step = html_step(len(segs))
    buckets = list(range(0, N_BUCKETS, step))
    cols = ["speed_kph", "p15_kph", "p85_kph", "n_traces", "confidence", "source"]
    g = _grid(warehouse, segs, buckets, cols)

    def u8(a: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return np.where(np.isfinite(a), np.clip(np.round(a * scale), 0, 254), 255).astype(np.uint8)

    lat0 = float(np.nanmean(np.concatenate(segs["geom_lat_deg"].to_numpy())))
    coords = [np.round(np.column_stack([lo, la]).ravel(), 6).tolist()
              for lo, la in zip(segs["geom_lon_deg"], segs["geom_lat_deg"], strict=True)]
    lut = (matplotlib.colormaps[CMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    data = {
        "lat0": lat0,
        "step": step,
        "buckets": buckets,
        "labels": [format_bucket(b) for b in buckets],
        "start": min(range(len(buckets)), key=lambda i: abs(buckets[i] - start)),
        "vmax": _vmax(g["speed_kph"]),
        "lut": ["#{:02x}{:02x}{:02x}".format(*c) for c in lut],
        "sources": list(SOURCES),
        "ids": segs["segment_id"].astype("int64").tolist(),
        "names": [None if pd.isna(n) else str(n) for n in segs["name"]],
        "classes": segs["road_class"].astype(str).tolist(),
        "lengths": np.round(segs["length_m"].to_numpy(float)).tolist(),
        "coords": coords,
        "speed": _b64(u8(g["speed_kph"])),
        "p15": _b64(u8(g["p15_kph"])),
        "p85": _b64(u8(g["p85_kph"])),
        "traces": _b64(np.where(np.isfinite(g["n_traces"]), np.clip(g["n_traces"], 0, 65534), 65535)
                       .astype("<u2")),
        "conf": _b64(u8(g["confidence"], 100)),
        "src": _b64(np.where(g["source"] >= 0, g["source"], 255).astype(np.uint8)),
    }
    # Escape "/" and "<" so no URL or closing tag can appear in the page text.
    payload = json.dumps(data, separators=(",", ":")).replace("/", "\\/").replace("<", "\\u003c")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_PAGE.replace("__DATA__", payload), encoding="utf-8")
    return out


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>speedprofile — expected speed by time of week</title>
<style>
html,body{margin:0;height:100%;background:#f7f7f2;color:#eee;font:14px system-ui,sans-serif;overflow:hidden}
#bar{position:absolute;left:0;right:0;top:0;height:56px;display:flex;align-items:center;gap:14px;padding:0 14px;
 background:#2b2b2b;color:#eee;box-sizing:border-box;z-index:2}
#slider{flex:1;height:28px}
#label{min-width:90px;font-weight:600;font-size:16px}
#legend{display:flex;align-items:center;gap:6px}
#ramp{width:160px;height:12px;border-radius:2px}
#map{position:absolute;left:0;top:56px;cursor:grab}
#tip{position:absolute;pointer-events:none;background:rgba(20,20,20,.92);border:1px solid #666;padding:6px 8px;
 border-radius:4px;display:none;white-space:nowrap;z-index:3;line-height:1.4}
</style></head>
<body>
<div id="bar"><span id="label"></span>
<input id="slider" type="range" min="0" step="1" aria-label="time of week">
<span id="legend">0<canvas id="ramp" width="160" height="12"></canvas><span id="vmax"></span> km/h</span></div>
<canvas id="map"></canvas><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const N = D.ids.length, T = D.buckets.length;
function bytes(b64) { const s = atob(b64), a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
const SPEED = bytes(D.speed), P15 = bytes(D.p15), P85 = bytes(D.p85), CONF = bytes(D.conf), SRC = bytes(D.src);
const TRACES = new Uint16Array(bytes(D.traces).buffer);
const kx = Math.cos(D.lat0 * Math.PI / 180);
const WIDTH = {motorway: 3.2, trunk: 3, primary: 2.6, secondary: 2.2, tertiary: 1.8};
let minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity;
const XY = D.coords.map(c => { const p = new Float64Array(c.length);
  for (let i = 0; i < c.length; i += 2) { p[i] = c[i] * kx; p[i + 1] = c[i + 1];
    minx = Math.min(minx, p[i]); maxx = Math.max(maxx, p[i]); miny = Math.min(miny, p[i + 1]); maxy = Math.max(maxy, p[i + 1]); }
  return p; });
const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
const slider = document.getElementById("slider"), label = document.getElementById("label"), tip = document.getElementById("tip");
slider.max = T - 1; slider.value = D.start;
document.getElementById("vmax").textContent = D.vmax;
const ramp = document.getElementById("ramp").getContext("2d");
for (let i = 0; i < 160; i++) { ramp.fillStyle = D.lut[Math.round(i * 255 / 159)]; ramp.fillRect(i, 0, 1, 12); }
let view = null, screen = [], hover = -1;
function fit() {
  canvas.width = window.innerWidth; canvas.height = window.innerHeight - 56;
  const s = Math.min((canvas.width - 40) / Math.max(maxx - minx, 1e-6), (canvas.height - 40) / Math.max(maxy - miny, 1e-6));
  view = {s: s, ox: (canvas.width - s * (maxx - minx)) / 2 - s * minx, oy: (canvas.height + s * (maxy - miny)) / 2 + s * miny};
}
function colour(v) { return v === 255 ? "#b4b4b4" : D.lut[Math.min(255, Math.round(v / D.vmax * 255))]; }
function draw() {
  const t = +slider.value; label.textContent = D.labels[t];
  ctx.fillStyle = "#f7f7f2"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.lineCap = "round"; ctx.lineJoin = "round";
  const order = [...Array(N).keys()].sort((a, b) => { const va = SPEED[a * T + t], vb = SPEED[b * T + t]; return (vb === 255 ? -1 : vb) - (va === 255 ? -1 : va); });
  screen = new Array(N);
  for (const i of order) {
    const p = XY[i], q = new Float64Array(p.length);
    for (let k = 0; k < p.length; k += 2) { q[k] = view.ox + view.s * p[k]; q[k + 1] = view.oy - view.s * p[k + 1]; }
    const w = WIDTH[D.classes[i]] || 1.4, off = w * 0.6 + 0.5, s = new Float64Array(q.length);
    for (let k = 0; k < q.length; k += 2) {   // shift to the right-hand side of the driving direction
      const a = Math.max(0, k - 2), b = Math.min(q.length - 2, k + 2);
      let dx = q[b] - q[a], dy = q[b + 1] - q[a + 1]; const L = Math.hypot(dx, dy) || 1;
      s[k] = q[k] - dy / L * off; s[k + 1] = q[k + 1] + dx / L * off;
    }
    screen[i] = s;
    ctx.strokeStyle = colour(SPEED[i * T + t]); ctx.lineWidth = i === hover ? w + 3 : w;
    ctx.beginPath(); ctx.moveTo(s[0], s[1]); for (let k = 2; k < s.length; k += 2) ctx.lineTo(s[k], s[k + 1]); ctx.stroke();
  }
}
function nearest(x, y) {
  let best = -1, bd = 8;
  for (let i = 0; i < N; i++) { const s = screen[i]; if (!s) continue;
    for (let k = 0; k + 3 < s.length; k += 2) {
      const ax = s[k], ay = s[k + 1], dx = s[k + 2] - ax, dy = s[k + 3] - ay, den = dx * dx + dy * dy;
      const u = den > 0 ? Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / den)) : 0;
      const d = Math.hypot(ax + u * dx - x, ay + u * dy - y); if (d < bd) { bd = d; best = i; } } }
  return best;
}
function detail(i) {
  const t = +slider.value, j = i * T + t, v = SPEED[j];
  const head = `<b>${esc(D.names[i] || "(unnamed)")}</b><br>segment ${D.ids[i]}, ${D.classes[i]}, ${D.lengths[i]} m<br>${D.labels[t]}: `;
  if (v === 255) return head + "no estimate";
  const spread = P15[j] === 255 || P85[j] === 255 ? "n/a" : `${P15[j]}\u2013${P85[j]}`;
  return head + `<b>${v} km/h</b><br>p15\u2013p85 ${spread} km/h<br>${TRACES[j] === 65535 ? "?" : TRACES[j]} traces, confidence ${(CONF[j] / 100).toFixed(2)}<br>source ${SRC[j] === 255 ? "?" : D.sources[SRC[j]]}`;
}
function esc(s) { return s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]); }
let drag = null;
canvas.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy}; canvas.style.cursor = "grabbing"; });
window.addEventListener("mouseup", () => { drag = null; canvas.style.cursor = "grab"; });
canvas.addEventListener("mousemove", e => {
  if (drag) { view.ox = drag.ox + e.clientX - drag.x; view.oy = drag.oy + e.clientY - drag.y; draw(); return; }
  const r = canvas.getBoundingClientRect(), i = nearest(e.clientX - r.left, e.clientY - r.top);
  if (i !== hover) { hover = i; draw(); }
  if (i < 0) { tip.style.display = "none"; return; }
  tip.innerHTML = detail(i); tip.style.display = "block";
  tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 14) + "px";
});
canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; if (hover >= 0) { hover = -1; draw(); } });
canvas.addEventListener("wheel", e => { e.preventDefault();
  const r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top, f = e.deltaY < 0 ? 1.25 : 0.8;
  view.ox = x - (x - view.ox) * f; view.oy = y - (y - view.oy) * f; view.s *= f; draw(); }, {passive: false});
slider.addEventListener("input", () => { draw(); if (hover >= 0) tip.innerHTML = detail(hover); });
window.addEventListener("resize", () => { fit(); draw(); });
fit(); draw();
window.speedmap = {labels: D.labels, step: D.step,
  // screen position (page pixels) of the middle vertex of a segment, for scripted hovering
  pointOf: id => { const i = D.ids.indexOf(id), s = screen[i], k = 2 * Math.floor(s.length / 4), r = canvas.getBoundingClientRect();
    return [r.left + (s.length > 4 ? s[k] : (s[0] + s[2]) / 2), r.top + (s.length > 4 ? s[k + 1] : (s[1] + s[3]) / 2)]; }};
</script></body></html>
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output file: .png (static panels) or .html (interactive)")
    p.add_argument("--at", action="append", default=None,
                   help="local time of week, e.g. 'Fri 08:00'; repeat (or comma-separate) for several PNG panels; "
                        f"the HTML slider starts at the first (default: {DEFAULT_AT[0]})")
    p.add_argument("--partition", default=None, help="comma-separated partition cells (default: all)")


def cli(args: argparse.Namespace) -> int:
    cells = [c.strip() for c in args.partition.split(",") if c.strip()] if args.partition else None
    suffix = Path(args.out).suffix.lower()
    if suffix == ".png":
        path = render_png(args.warehouse, args.out, args.at, cells)
    elif suffix in (".html", ".htm"):
        path = render_html(args.warehouse, args.out, args.at, cells)
    else:
        raise UserError(f"--out must end in .png or .html (got {args.out!r})")
    print(f"map: {path}")
    return 0
