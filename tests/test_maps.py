"""map: PNG panels coloured by speed (viridis: slow purple, fast yellow) and the offline HTML page driven in
headless Chromium through the DevTools protocol (slider dragged, hover read, network requests recorded)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from speedprofile.cli import main
from speedprofile.serve.maps import AXES_COLOUR, CMAP, render_html, render_png
from speedprofile.serve.timeofweek import parse_time_of_week

LUT = (matplotlib.colormaps[CMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(float)


def speed_positions(rgb: np.ndarray) -> np.ndarray:
    """Viridis position (0 = slowest .. 255 = fastest) of every pixel whose colour is on the colour ramp."""
    px = rgb.reshape(-1, 3).astype(float)
    px = px[np.abs(px - px.mean(axis=1, keepdims=True)).max(axis=1) > 25]  # drop greys / background
    if len(px) == 0:
        return np.zeros(0)
    d = ((px[:, None, :] - LUT[None, :, :]) ** 2).sum(axis=2)
    idx, dist = d.argmin(axis=1), np.sqrt(d.min(axis=1))
    return idx[dist < 30]


def panels(img: np.ndarray) -> list[np.ndarray]:
    """Crops of the map panels: column runs containing the axes background colour."""
    bg = np.array(matplotlib.colors.to_rgb(AXES_COLOUR)) * 255
    mask = (np.abs(img[:, :, :3].astype(float) - bg).max(axis=2) < 2)
    cols = np.where(mask.sum(axis=0) > 50)[0]
    runs = np.split(cols, np.where(np.diff(cols) > 1)[0] + 1)
    out = []
    for run in runs:
        rows = np.where(mask[:, run].any(axis=1))[0]
        out.append(img[rows.min():rows.max() + 1, run.min():run.max() + 1, :3])
    return out


def test_png_has_one_panel_per_time_and_colours_follow_speed(serve_warehouse, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert main(["map", "--warehouse", str(serve_warehouse), "--out", str(out),
                 "--at", "Fri 08:00", "--at", "Fri 03:00"]) == 0
    assert str(out) in capsys.readouterr().out
    img = np.asarray(Image.open(out).convert("RGB"))
    rush, night = panels(img)
    pos_rush, pos_night = speed_positions(rush), speed_positions(night)
    assert len(pos_rush) > 200 and len(pos_night) > 200
    # the fixture's weekday 08:00 speeds are ~35% of free flow: markedly more purple than at 03:00
    assert np.median(pos_night) > np.median(pos_rush) + 60
    assert (pos_night > 200).sum() > 5 * max(1, (pos_rush > 200).sum())  # yellow (fast motorway) only at night
    single = tmp_path / "one.png"
    render_png(str(serve_warehouse), single, at="Fri 03:00")
    assert len(panels(np.asarray(Image.open(single).convert("RGB")))) == 1


def test_map_rejects_unknown_format(serve_warehouse, tmp_path, capsys):
    assert main(["map", "--warehouse", str(serve_warehouse), "--out", str(tmp_path / "m.svg")]) == 2
    assert "--out must end in .png or .html" in capsys.readouterr().err


def test_html_is_self_contained(serve_warehouse, tmp_path):
    page = render_html(str(serve_warehouse), tmp_path / "m.html").read_text()
    lowered = page.lower()
    for needle in ("http://", "https://", "//cdn", "<link", " src=", "@import", "url(", "fetch(", "xmlhttprequest"):
        assert needle not in lowered, needle
    assert page.count("<script") == 2 and "Rua de Santa Catarina" in page


class DevTools:
    """Minimal Chrome DevTools Protocol client over a websocket (request/response + collected events)."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if buttons or kind != "mouseMoved"
                  else "none", buttons=buttons, clickCount=1 if kind != "mouseMoved" else 0)

    def screenshot(self) -> np.ndarray:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


@pytest.fixture
def browser(chromium_bin, tmp_path):
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [chromium_bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-allow-origins=*", "--window-size=1200,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {proc.stderr.read().decode()[-800:] if proc.poll() is not None else 'timeout'}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        with connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=20) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _open(cdp: DevTools, html: Path) -> list[str]:
    """Load the page; returns every URL the page requested."""
    cdp.call("Network.enable")
    cdp.call("Page.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1200, height=800, deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", url=html.resolve().as_uri())
    cdp.wait_event("Page.loadEventFired")
    # the page inflates its data asynchronously (DecompressionStream), then draws and publishes window.speedmap
    cdp.eval("new Promise((ok, fail) => { const t0 = Date.now(); (function poll() {"
             " if (window.speedmap && window.speedmap.ready) return ok(true);"
             " if (Date.now() - t0 > 30000) return fail(new Error('map not ready')); setTimeout(poll, 50); })(); })")
    cdp.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]


def _map_area(shot: np.ndarray) -> np.ndarray:
    return shot[70:, :, :]  # below the 56 px control bar


def test_html_slider_changes_colours_in_headless_chromium(serve_warehouse, tmp_path, browser):
    html = tmp_path / "speeds.html"
    assert main(["map", "--warehouse", str(serve_warehouse), "--out", str(html), "--at", "Fri 08:00"]) == 0
    requested = _open(browser, html)
    assert requested == [html.resolve().as_uri()], requested  # the page itself, nothing else
    assert browser.eval("document.getElementById('label').textContent") == "Fri 08:00"
    assert browser.eval("+document.getElementById('slider').max") == 2015  # every 5-minute bucket of the week
    # the speed drawn is the DCT-decoded profile: within 1.5 km/h of the estimate for that bucket
    speed, _ = _fixture_speed(103, parse_time_of_week("Fri 08:00"))
    assert abs(browser.eval("window.speedmap.speedOf(103)") - speed) < 1.5
    before = _map_area(browser.screenshot())
    pos_before = speed_positions(before)

    # drag the slider thumb from Fri 08:00 to Fri 03:00 with real mouse events
    info = browser.eval("(() => { const s = document.getElementById('slider'), r = s.getBoundingClientRect();"
                        " return {left: r.left, width: r.width, top: r.top, height: r.height, max: +s.max,"
                        " value: +s.value, step: window.speedmap.step}; })()")
    thumb = 16.0
    def x_of(v: float) -> float:
        return info["left"] + thumb / 2 + (info["width"] - thumb) * v / info["max"]
    y = info["top"] + info["height"] / 2
    target = parse_time_of_week("Fri 03:00") / info["step"]
    browser.mouse("mousePressed", x_of(info["value"]), y, buttons=1)
    for f in np.linspace(0, 1, 8)[1:]:
        browser.mouse("mouseMoved", x_of(info["value"] + f * (target - info["value"])), y, buttons=1)
    browser.mouse("mouseReleased", x_of(target), y)
    browser.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    label = browser.eval("document.getElementById('label').textContent")
    moved_to = int(browser.eval("+document.getElementById('slider').value")) * info["step"]
    assert label.startswith("Fri 0") and abs(moved_to - parse_time_of_week("Fri 03:00")) <= 6, label
    after = _map_area(browser.screenshot())
    pos_after = speed_positions(after)
    assert len(pos_before) > 200 and len(pos_after) > 200
    assert np.median(pos_after) > np.median(pos_before) + 60  # purple rush hour -> yellow-green night
    changed = (np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 30).sum()
    assert changed > 500

    # hover the Aliados segment: the tooltip shows its name and speed at the slider time
    x, y = browser.eval("window.speedmap.pointOf(103)")
    browser.mouse("mouseMoved", x, y)
    tip = browser.eval("document.getElementById('tip').style.display + '|' + document.getElementById('tip').innerText")
    shown, text = tip.split("|", 1)
    assert shown == "block" and "Avenida dos Aliados" in text and "segment 103" in text and "km/h" in text
    _, traces = _fixture_speed(103, parse_time_of_week(label) // 12 * 12)  # hover details are per hour
    assert label in text and "p15\u2013p85" in text and f"{traces} traces" in text
    assert f"source {'observed' if traces >= 3 else 'neighbour_buckets'}" in text
    # still no request after interacting
    assert not [e for e in browser.events if e.get("method") == "Network.requestWillBeSent"
                and e["params"]["request"]["url"] != html.resolve().as_uri()]
    assert os.path.getsize(html) < 2_000_000


def _fixture_speed(segment_id: int, bucket: int) -> tuple[float, int]:
    from tests.plugins.serve import fixture_segments, profile_kph, traces_of

    seg = next(x for x in fixture_segments() if x["segment_id"] == segment_id)
    b = np.array([bucket])
    return float(profile_kph(seg["free_flow_kph"], b)[0]), int(traces_of(b)[0])


def test_html_map_stays_under_a_kilobyte_per_segment(tmp_path):
    """Noisy per-bucket speeds (the worst case for the codec): the page still costs < 1 kB per segment."""
    import pandas as pd

    from speedprofile.serve.maps import render_html
    from tests.plugins.serve import estimates_frame, write_warehouse

    rng = np.random.default_rng(5)
    segs = []
    for i in range(300):
        lon0, lat0 = -8.62 + (i % 20) * 0.001, 41.14 + (i // 20) * 0.001
        segs.append({"segment_id": 10_000 + i, "osm_way_id": 500 + i, "from_node_id": 2 * i, "to_node_id": 2 * i + 1,
                     "reverse_segment_id": None, "road_class": "residential", "maxspeed_kph": 50.0,
                     "name": f"Rua {i}", "is_oneway": True, "free_flow_kph": float(rng.uniform(20, 90)),
                     "partition": f"cell{i % 3}", "lon": [lon0, lon0 + 0.0007, lon0 + 0.0009],
                     "lat": [lat0, lat0 + 0.0004, lat0 + 0.0009]})
    frames = []
    for seg in segs:
        f = estimates_frame(seg)
        noise = rng.normal(0, 6, len(f))
        for c in ("speed_kph", "p15_kph", "p85_kph"):
            f[c] = (f[c] + noise).clip(lower=1).round(2)
        f["n_traces"] = rng.integers(0, 60, len(f))
        frames.append(f)
    wh = write_warehouse(tmp_path / "wh", segs, pd.concat(frames, ignore_index=True))
    html = render_html(str(wh), tmp_path / "m.html")
    per_segment = html.stat().st_size / len(segs)
    assert per_segment < 1000, per_segment
