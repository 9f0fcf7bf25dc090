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


HOURS = 168  # hover details (p15-p85, traces, source) are kept per hour of the week: the hour's first bucket


def _profiles(warehouse: str, segs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per segment (rows of segs): 200 DCT coefficients of the gap-filled 2016-bucket speed profile, a has-data
    flag, and per hour of the week p15 / p85 (km/h), distinct traces and the source index (255 = none)."""
    from speedprofile.serve import predicted_speeds as ps
    from speedprofile.serve.data import estimate_partitions, load_estimates
    from speedprofile.serve.exports import fill_week

    n = len(segs)
    out: dict[str, np.ndarray] = {"coef": np.zeros((n, ps.COEFFICIENT_COUNT), np.int16), "has": np.zeros(n, np.uint8)}
    out.update({k: np.full((n, HOURS), 255, np.uint8) for k in ("p15", "p85", "traces", "src")})
    src_code = {s: i for i, s in enumerate(SOURCES)}
    row_of = pd.Series(np.arange(n), index=segs["segment_id"].to_numpy())
    for cell in sorted(set(segs["partition"]) & set(estimate_partitions(warehouse))):
        est = load_estimates(warehouse, [cell], columns=["segment_id", "tow_bucket", "speed_kph", "p15_kph",
                                                           "p85_kph", "n_traces", "source"])
        r = row_of.reindex(est["segment_id"].to_numpy()).to_numpy()
        b = est["tow_bucket"].to_numpy(dtype=float)
        ok = np.isfinite(r) & (b >= 0) & (b < N_BUCKETS)
        r, b, est = r[ok].astype(int), b[ok].astype(int), est[ok]
        rows = np.unique(r)
        local = pd.Series(np.arange(len(rows)), index=rows)[r].to_numpy()
        speeds = np.full((len(rows), N_BUCKETS), np.nan)
        speeds[local, b] = est["speed_kph"].to_numpy(dtype=float)
        filled, has = fill_week(speeds)
        out["coef"][rows[has]] = ps.compress(filled[has])
        out["has"][rows[has]] = 1
        first = b % 12 == 0
        h, rr = b[first] // 12, r[first]

        def u8(v) -> np.ndarray:
            x = pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(dtype=float)
            return np.where(np.isfinite(x), np.clip(np.round(x), 0, 254), 255).astype(np.uint8)

        for key, col in (("p15", "p15_kph"), ("p85", "p85_kph"), ("traces", "n_traces")):
            out[key][rr, h] = u8(est[col].to_numpy()[first])
        out["src"][rr, h] = pd.Series(est["source"].to_numpy()[first]).map(src_code).fillna(255).to_numpy(np.uint8)
    return out


def render_html(warehouse: str, out: str | Path, at: Sequence[str] | str | None = None,
                partitions: Sequence[str] | None = None) -> Path:
    """One self-contained HTML page (inline data, script and style; no network) with a time-of-week slider over all
    2016 five-minute buckets. Speeds travel as the 200 DCT coefficients of the Valhalla codec, hover details per
    hour, geometry as integer micro-degree deltas, all in one gzip stream (the page inflates it with the
    browser's DecompressionStream): well under 1 kB per segment."""
    import gzip

    import matplotlib

    from speedprofile.serve import predicted_speeds as ps

    start = parse_many(at, list(DEFAULT_AT))[0]
    segs = _network(warehouse, partitions)
    prof = _profiles(warehouse, segs)
    lons, lats = segs["geom_lon_deg"].to_numpy(), segs["geom_lat_deg"].to_numpy()
    counts = np.array([len(x) for x in lons], dtype=np.uint16)
    xy = np.column_stack([np.round(np.concatenate(lons).astype(float) * 1e6),
                          np.round(np.concatenate(lats).astype(float) * 1e6)]).astype(np.int64)
    dxy = np.diff(xy, axis=0, prepend=np.zeros((1, 2), np.int64)).astype(np.int32)  # deltas compress well
    names = [None if pd.isna(v) else str(v) for v in segs["name"]]
    name_list = sorted({v for v in names if v is not None})
    name_idx: dict[str | None, int] = {v: i + 1 for i, v in enumerate(name_list)}
    classes = sorted(set(segs["road_class"].astype(str)))
    class_idx = {c: i for i, c in enumerate(classes)}
    sections = [  # (name, array): 8-, 4-, 2-, then 1-byte items, so every section starts aligned
        ("ids", segs["segment_id"].to_numpy(np.int64)),
        ("xy", dxy.ravel()),
        ("names", np.array([name_idx.get(v, 0) for v in names], np.uint32)),
        ("coef", prof["coef"].ravel()),
        ("counts", counts),
        ("lengths", np.clip(np.round(segs["length_m"].to_numpy(float)), 0, 65535).astype(np.uint16)),
        ("classes", np.array([class_idx[c] for c in segs["road_class"].astype(str)], np.uint8)),
        ("has", prof["has"]),
        *((k, prof[k].ravel()) for k in ("p15", "p85", "traces", "src")),
    ]
    layout, blobs, offset = {}, [], 0
    for name, arr in sections:
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        layout[name] = [offset, len(raw)]
        blobs.append(raw)
        offset += len(raw)
    packed = gzip.compress(b"".join(blobs), compresslevel=9, mtime=0)
    lut = (matplotlib.colormaps[CMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    lat0 = float(np.nanmean(np.concatenate(lats).astype(float))) if len(lats) else 0.0
    filled = ps.decompress(prof["coef"][prof["has"] == 1]) if prof["has"].any() else np.zeros((0, N_BUCKETS))
    data = {
        "n": len(segs), "lat0": lat0, "start": int(start), "hours": HOURS,
        "vmax": _vmax(filled), "lut": ["#{:02x}{:02x}{:02x}".format(*c) for c in lut],
        "sources": list(SOURCES), "names": name_list, "classes": classes,
        "ncoef": ps.COEFFICIENT_COUNT, "norm": ps.SPEED_NORMALIZATION, "layout": layout,
        "bin": base64.b64encode(packed).decode("ascii"),
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
(async () => {
const D = JSON.parse(document.getElementById("data").textContent);
const N = D.n, T = 2016, H = D.hours, K = D.ncoef;
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const label_of = t => `${DAYS[Math.floor(t / 288)]} ${String(Math.floor(t % 288 / 12)).padStart(2, "0")}:${String(t % 12 * 5).padStart(2, "0")}`;
const packed = Uint8Array.from(atob(D.bin), c => c.charCodeAt(0));
const buf = await new Response(new Blob([packed]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
const sec = (name, Type) => { const [o, n] = D.layout[name]; return new Type(buf.slice(o, o + n)); };
const IDS = sec("ids", BigInt64Array), DXY = sec("xy", Int32Array), NAMEI = sec("names", Uint32Array);
const COEF = sec("coef", Int16Array), COUNTS = sec("counts", Uint16Array), LENGTHS = sec("lengths", Uint16Array);
const CLASSI = sec("classes", Uint8Array), HAS = sec("has", Uint8Array);
const P15 = sec("p15", Uint8Array), P85 = sec("p85", Uint8Array), TRACES = sec("traces", Uint8Array), SRC = sec("src", Uint8Array);
const kx = Math.cos(D.lat0 * Math.PI / 180);
const WIDTH = {motorway: 3.2, trunk: 3, primary: 2.6, secondary: 2.2, tertiary: 1.8};
let minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity;
const XY = new Array(N); { let x = 0, y = 0, v = 0;
  for (let i = 0; i < N; i++) { const p = new Float64Array(2 * COUNTS[i]);
    for (let k = 0; k < p.length; k += 2, v++) { x += DXY[2 * v]; y += DXY[2 * v + 1]; p[k] = x / 1e6 * kx; p[k + 1] = y / 1e6;
      minx = Math.min(minx, p[k]); maxx = Math.max(maxx, p[k]); miny = Math.min(miny, p[k + 1]); maxy = Math.max(maxy, p[k + 1]); }
    XY[i] = p; } }
const SPEED = new Float32Array(N), COS = new Float64Array(K);
function speeds(t) {  // DCT-III of each segment's 200 coefficients at bucket t (Valhalla's decompress_speed_bucket)
  for (let k = 0; k < K; k++) COS[k] = Math.cos(Math.PI / T * (t + 0.5) * k) * (k === 0 ? Math.SQRT1_2 : 1);
  for (let i = 0, o = 0; i < N; i++, o += K) { if (!HAS[i]) { SPEED[i] = -1; continue; }
    let s = 0; for (let k = 0; k < K; k++) s += COEF[o + k] * COS[k]; SPEED[i] = Math.max(0, D.norm * s); }
}
const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
const slider = document.getElementById("slider"), label = document.getElementById("label"), tip = document.getElementById("tip");
slider.max = T - 1; slider.value = D.start;
document.getElementById("vmax").textContent = D.vmax;
const ramp = document.getElementById("ramp").getContext("2d");
for (let i = 0; i < 160; i++) { ramp.fillStyle = D.lut[Math.round(i * 255 / 159)]; ramp.fillRect(i, 0, 1, 12); }
let view = null, screen = [], hover = -1, shown = -1;
function fit() {
  canvas.width = window.innerWidth; canvas.height = window.innerHeight - 56;
  const s = Math.min((canvas.width - 40) / Math.max(maxx - minx, 1e-6), (canvas.height - 40) / Math.max(maxy - miny, 1e-6));
  view = {s: s, ox: (canvas.width - s * (maxx - minx)) / 2 - s * minx, oy: (canvas.height + s * (maxy - miny)) / 2 + s * miny};
}
function colour(v) { return v < 0 ? "#b4b4b4" : D.lut[Math.min(255, Math.round(v / D.vmax * 255))]; }
function draw() {
  const t = +slider.value; label.textContent = label_of(t);
  if (t !== shown) { speeds(t); shown = t; }
  ctx.fillStyle = "#f7f7f2"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.lineCap = "round"; ctx.lineJoin = "round";
  const order = [...Array(N).keys()].sort((a, b) => SPEED[b] - SPEED[a]);
  screen = new Array(N);
  for (const i of order) {
    const p = XY[i], q = new Float64Array(p.length);
    for (let k = 0; k < p.length; k += 2) { q[k] = view.ox + view.s * p[k]; q[k + 1] = view.oy - view.s * p[k + 1]; }
    const w = WIDTH[D.classes[CLASSI[i]]] || 1.4, off = w * 0.6 + 0.5, s = new Float64Array(q.length);
    for (let k = 0; k < q.length; k += 2) {   // shift to the right-hand side of the driving direction
      const a = Math.max(0, k - 2), b = Math.min(q.length - 2, k + 2);
      let dx = q[b] - q[a], dy = q[b + 1] - q[a + 1]; const L = Math.hypot(dx, dy) || 1;
      s[k] = q[k] - dy / L * off; s[k + 1] = q[k + 1] + dx / L * off;
    }
    screen[i] = s;
    ctx.strokeStyle = colour(SPEED[i]); ctx.lineWidth = i === hover ? w + 3 : w;
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
  const t = +slider.value, h = Math.floor(t / 12), j = i * H + h, v = SPEED[i];
  const name = NAMEI[i] ? D.names[NAMEI[i] - 1] : "(unnamed)";
  const head = `<b>${esc(name)}</b><br>segment ${IDS[i]}, ${D.classes[CLASSI[i]]}, ${LENGTHS[i]} m<br>${label_of(t)}: `;
  if (v < 0) return head + "no estimate";
  const spread = P15[j] === 255 || P85[j] === 255 ? "n/a" : `${P15[j]}\u2013${P85[j]}`;
  const at = label_of(h * 12);
  return head + `<b>${Math.round(v)} km/h</b><br>at ${at}: p15\u2013p85 ${spread} km/h, ${TRACES[j] === 255 ? "?" : TRACES[j]} traces` +
    `<br>source ${SRC[j] === 255 ? "?" : D.sources[SRC[j]]}`;
}
function esc(s) { return s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]); }
let drag = null, pending = false;
function redraw() { if (pending) return; pending = true; requestAnimationFrame(() => { pending = false; draw(); if (hover >= 0) tip.innerHTML = detail(hover); }); }
canvas.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy}; canvas.style.cursor = "grabbing"; });
window.addEventListener("mouseup", () => { drag = null; canvas.style.cursor = "grab"; });
canvas.addEventListener("mousemove", e => {
  if (drag) { view.ox = drag.ox + e.clientX - drag.x; view.oy = drag.oy + e.clientY - drag.y; redraw(); return; }
  const r = canvas.getBoundingClientRect(), i = nearest(e.clientX - r.left, e.clientY - r.top);
  if (i !== hover) { hover = i; draw(); }
  if (i < 0) { tip.style.display = "none"; return; }
  tip.innerHTML = detail(i); tip.style.display = "block";
  tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 14) + "px";
});
canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; if (hover >= 0) { hover = -1; draw(); } });
canvas.addEventListener("wheel", e => { e.preventDefault();
  const r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top, f = e.deltaY < 0 ? 1.25 : 0.8;
  view.ox = x - (x - view.ox) * f; view.oy = y - (y - view.oy) * f; view.s *= f; redraw(); }, {passive: false});
slider.addEventListener("input", redraw);
window.addEventListener("resize", () => { fit(); draw(); });
fit(); draw();
window.speedmap = {labels: [...Array(T).keys()].map(label_of), step: 1, ready: true,
  speedOf: id => SPEED[IDS.indexOf(BigInt(id))],
  // screen position (page pixels) of the middle vertex of a segment, for scripted hovering
  pointOf: id => { const i = IDS.indexOf(BigInt(id)), s = screen[i], k = 2 * Math.floor(s.length / 4), r = canvas.getBoundingClientRect();
    return [r.left + (s.length > 4 ? s[k] : (s[0] + s[2]) / 2), r.top + (s.length > 4 ? s[k + 1] : (s[1] + s[3]) / 2)]; }};
})();
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
