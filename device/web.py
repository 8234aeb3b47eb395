"""A local web view, off by default: ``--serve HOST:PORT`` (HOST defaults to 127.0.0.1).

- ``/``: one self-contained page (no external assets, works offline): the live annotated video,
  the current faces and labels, fps and per-stage latency, and the last minutes' emotion timeline;
- ``/stream.mjpg``: the live view as MJPEG;
- ``/api/status``: the same figures as JSON;
- ``/metrics``: Prometheus text (fps, frames, faces, dropped frames, reconnects, CSV backlog, MQTT queue).

The pipeline only hands over a reference to its latest result (no copy, no lock).  Frames are
JPEG-encoded in the web server's threads, only while a client watches the stream, and at most
``max_fps`` times a second whatever the number of viewers; when the pipeline did not draw the
overlay itself (headless), it is drawn here on a copy.  An optional token (``web.token`` or
EMOTION_WEB_TOKEN) is required as ``?token=`` or ``Authorization: Bearer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import cv2

from device import overlay
from device.config import OverlayConfig, WebConfig, parse_serve
from device.errors import ConfigError
from device.frames import FrameResult
from device.results import face_dict, timestamp
from device.stages import Stats

log = logging.getLogger(__name__)

BOUNDARY = "frame"
JPEG_QUALITY = 80


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer that never disconnects does not hold up the exit
    view: "WebView"


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebView:
    def __init__(self, cfg: WebConfig, labels: tuple[str, ...], overlay_cfg: OverlayConfig, annotated: bool,
                 counters: Callable[[], dict[str, float]] = dict, device_id: str | None = None):
        host, port = parse_serve(cfg.serve or "")
        self.cfg, self.labels, self.overlay_cfg, self.annotated = cfg, labels, overlay_cfg, annotated
        self.device_id = device_id or socket.gethostname()
        self.token = cfg.token or os.environ.get("EMOTION_WEB_TOKEN") or None
        self._counters = counters
        self._latest: tuple[int, FrameResult] | None = None  # (sequence number, result): one reference
        self._stats: Stats | None = None
        self._timeline: deque[tuple[int, dict[str, int]]] = deque(maxlen=int(cfg.timeline_minutes * 60))
        self._second, self._counts = 0, Counter()
        self._encode_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._last_encode = 0.0
        self.encoded = 0  # frames JPEG-encoded (0 while nobody watches)
        self.clients = 0
        self._closing = threading.Event()
        cls = _Server6 if ":" in host else _Server
        try:
            self.server = cls((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"web.serve: cannot listen on {cfg.serve}: {exc.strerror or exc}") from None
        self.server.view = self
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="web", daemon=True)
        self._thread.start()
        if not is_loopback(host):
            log.warning("web view on %s:%d: video of the camera leaves this device to anyone who can reach that "
                        "address%s", host, self.port, "" if self.token else " (no token set: web.token)")
        log.info("web view: http://%s:%d/", f"[{host}]" if ":" in host else host, self.port)

    # -- the pipeline's side: a reference and a few counts, nothing else -----------------------------
    def publish(self, result: FrameResult, stats: Stats) -> None:
        seq = self._latest[0] + 1 if self._latest else 0
        self._latest, self._stats = (seq, result), stats
        second = int(time.time())
        if second != self._second:
            if self._counts or self._second:
                self._timeline.append((self._second, dict(self._counts)))
            self._second, self._counts = second, Counter()
        for face in result.faces:
            self._counts[face.label] += 1

    def counters(self) -> dict[str, float]:
        return {"web_clients": self.clients, "web_frames_encoded": self.encoded}

    def health(self) -> str:
        return f"web viewers {self.clients}"

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=2.0)

    # -- the web threads ---------------------------------------------------------------------------
    def jpeg(self) -> tuple[int, bytes] | None:
        """The latest frame as JPEG, encoded at most ``max_fps`` times a second for all viewers together."""
        latest = self._latest
        if latest is None:
            return None
        with self._encode_lock:
            now = time.monotonic()
            if self._jpeg[0] != latest[0] and (now - self._last_encode >= 1 / self.cfg.max_fps or self._jpeg[0] < 0):
                seq, result = latest
                image = result.frame.image
                if not self.annotated:  # headless: the pipeline drew nothing; draw on a copy
                    stats = self._stats.snapshot()
                    image = overlay.draw(image.copy(), result.faces, self.labels, self.overlay_cfg, stats.fps(),
                                         stats.median_ms() if self.overlay_cfg.stats else None)
                ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    self._jpeg, self._last_encode = (seq, data.tobytes()), now
                    self.encoded += 1
            return self._jpeg if self._jpeg[0] >= 0 else None

    def status(self) -> dict:
        out: dict = {"device_id": self.device_id, "time": time.time(), "labels": list(self.labels),
                     "colors": {label: "#%02x%02x%02x" % overlay.color_for(label)[::-1] for label in self.labels}}
        if self._stats is not None:
            s = self._stats.snapshot()
            ms = s.median_ms()
            out.update(fps=round(s.fps(), 2), frames=s.frames, faces=s.faces,
                       frames_without_faces=s.frames_without_faces, dropped_frames=s.skipped_frames,
                       reconnects=s.reconnects, uptime_s=round(time.monotonic() - s.started, 1),
                       latency_ms={k: round(v, 2) for k, v in ms.items()}, latency_total_ms=round(sum(ms.values()), 2))
        latest = self._latest
        if latest is not None:
            result = latest[1]
            out["current"] = {"frame": result.frame.index, "timestamp": timestamp(result),
                              "source": result.frame.source, "faces": [face_dict(f, self.labels) for f in result.faces]}
        buckets = list(self._timeline.copy()) + [(self._second, dict(self._counts))]
        out["timeline"] = [{"t": t, "counts": c} for t, c in buckets if t]
        out["counters"] = self._counters()
        return out

    def metrics(self) -> str:
        status = self.status()
        counters = status["counters"]
        rows = [("emotion_fps", "gauge", "frames per second over the last 120 frames", status.get("fps", 0)),
                ("emotion_frames_total", "counter", "frames processed", status.get("frames", 0)),
                ("emotion_faces_total", "counter", "faces found, summed over frames", status.get("faces", 0)),
                ("emotion_dropped_frames_total", "counter", "unreadable frames skipped",
                 status.get("dropped_frames", 0)),
                ("emotion_reconnects_total", "counter", "camera reconnects", status.get("reconnects", 0)),
                ("emotion_csv_backlog_rows", "gauge", "CSV rows held in memory (disk full)",
                 counters.get("csv_backlog", 0)),
                ("emotion_csv_rows_dropped_total", "counter", "CSV rows dropped (disk full too long)",
                 counters.get("csv_rows_dropped", 0)),
                ("emotion_mqtt_queue", "gauge", "MQTT messages waiting for the broker", counters.get("mqtt_queue", 0)),
                ("emotion_mqtt_dropped_total", "counter", "MQTT messages dropped (queue full)",
                 counters.get("mqtt_dropped", 0)),
                ("emotion_mqtt_reconnects_total", "counter", "MQTT broker reconnects",
                 counters.get("mqtt_reconnects", 0)),
                ("emotion_web_clients", "gauge", "viewers of the live stream", counters.get("web_clients", 0))]
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {float(value)}"]
        lines += ["# HELP emotion_stage_latency_ms median per-stage latency over the last 120 frames",
                  "# TYPE emotion_stage_latency_ms gauge"]
        lines += [f'emotion_stage_latency_ms{{stage="{k}"}} {v}' for k, v in status.get("latency_ms", {}).items()]
        return "\n".join(lines) + "\n"

    def authorized(self, query: str, header: str | None) -> bool:
        if self.token is None:
            return True
        given = parse_qs(query).get("token", [""])[0]
        if header and header.startswith("Bearer "):
            given = header[7:]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def stream(self, write: Callable[[bytes], None]) -> None:
        """Write the MJPEG stream until the client leaves or the view closes."""
        interval, sent = 1 / self.cfg.max_fps, -1
        with self._encode_lock:
            self.clients += 1
        try:
            write(f"--{BOUNDARY}\r\n".encode())
            while not self._closing.is_set():
                start = time.monotonic()
                frame = self.jpeg()
                if frame is not None and frame[0] != sent:
                    sent, data = frame
                    # The boundary right after the part: browsers show a part once the next boundary comes.
                    write(f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                          + data + f"\r\n--{BOUNDARY}\r\n".encode())
                self._closing.wait(max(0.0, interval - (time.monotonic() - start)))
        finally:
            with self._encode_lock:
                self.clients -= 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "emotion-device"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        view = self.server.view
        url = urlsplit(self.path)
        if not view.authorized(url.query, self.headers.get("Authorization")):
            self._send(401, "text/plain; charset=utf-8", b"token required: ?token=... or Authorization: Bearer\n")
            return
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif url.path == "/api/status":
            self._send(200, "application/json", json.dumps(view.status()).encode())
        elif url.path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", view.metrics().encode())
        elif url.path == "/stream.mjpg":
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                view.stream(self._write)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the viewer left
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send(self, code: int, kind: str, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>emotion device</title>
<style>
body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#ddd}
header{padding:6px 12px;background:#222}main{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
#video{display:block;background:#000}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left}
th{color:#999;font-weight:normal}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
section{min-width:260px}h2{font-size:14px;margin:8px 0 4px;color:#aaa}
</style></head><body>
<header><b>emotion device</b> <span id="dev"></span> <span id="err" style="color:#f66"></span></header>
<main>
<div><img id="video" alt="live view"></div>
<section><h2>now</h2><div id="rate"></div>
<h2>faces</h2><table id="faces"><tr><th>track</th><th>label</th><th>conf.</th><th>box</th></tr></table>
<h2>latency (median ms)</h2><table id="lat"></table>
<h2>counters</h2><table id="cnt"></table></section>
<div style="flex-basis:100%"><h2>emotion timeline (faces per second)</h2>
<canvas id="tl" width="900" height="120" style="background:#000"></canvas><div id="legend"></div></div>
</main>
<script>
const q = new URLSearchParams(location.search), tok = q.get("token");
const withToken = p => tok ? p + "?token=" + encodeURIComponent(tok) : p;
document.getElementById("video").src = withToken("stream.mjpg");
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
const rows = o => Object.entries(o).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("");
function timeline(s) {
  const c = document.getElementById("tl"), g = c.getContext("2d"), b = s.timeline;
  g.clearRect(0, 0, c.width, c.height);
  if (!b.length) return;
  const w = c.width / Math.max(b.length, 60), peak = Math.max(1, ...b.map(x => Object.values(x.counts).reduce((a, v) => a + v, 0)));
  b.forEach((x, i) => { let y = c.height;
    for (const l of s.labels) { const h = (x.counts[l] || 0) / peak * c.height;
      g.fillStyle = s.colors[l]; g.fillRect(i * w, y - h, Math.max(1, w - 1), h); y -= h; } });
  document.getElementById("legend").innerHTML = s.labels.map(l => `<span class="sw" style="background:${s.colors[l]}"></span>${esc(l)} `).join("");
}
async function tick() {
  try {
    const r = await fetch(withToken("api/status")); const s = await r.json();
    document.getElementById("err").textContent = "";
    document.getElementById("dev").textContent = s.device_id;
    document.getElementById("rate").textContent = `${(s.fps || 0).toFixed(1)} fps, ${s.frames || 0} frames, ${s.faces || 0} faces, latency ${(s.latency_total_ms || 0).toFixed(1)} ms`;
    const f = (s.current || {faces: []}).faces;
    document.getElementById("faces").innerHTML = "<tr><th>track</th><th>label</th><th>conf.</th><th>box</th></tr>" +
      f.map(x => `<tr><td>#${x.track_id}</td><td><span class="sw" style="background:${s.colors[x.label] || "#888"}"></span>${esc(x.label)}</td><td>${(100 * x.confidence).toFixed(0)}%</td><td>${x.x},${x.y} ${x.w}x${x.h}</td></tr>`).join("");
    document.getElementById("lat").innerHTML = rows(s.latency_ms || {});
    document.getElementById("cnt").innerHTML = rows(s.counters || {});
    timeline(s);
  } catch (e) { document.getElementById("err").textContent = "no connection to the device"; }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""
