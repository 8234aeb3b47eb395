"""The web view on loopback with real faces: a real headless Chromium shows the live video with the boxes,
/api/status matches the pipeline's counts, /metrics parses, frames are encoded only while someone watches."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from device import config as cfgmod
from device.errors import ConfigError
from device.frames import Box
from device.overlay import color_for
from tests.brokers import free_port, wait_until
from tests.conftest import FER, ROOT
from tests.test_device import FACE_PX, FER_FACES, positions

MODEL = ROOT / "models" / "emotion_ferplus.tflite"  # the default: 8 expressions


def still_video(path, frames: int = 30):
    """Three FER2013 faces standing still at known places on grey (MJPG), and the bare frame."""
    if not FER.is_dir():
        pytest.skip("FER2013 not available")
    canvas = np.full((480, 640), 110, np.uint8)
    for (label, name), box in zip(FER_FACES, positions(0)):
        face = cv2.imread(str(FER / "val" / label / name), cv2.IMREAD_GRAYSCALE)
        canvas[box.y:box.y + box.h, box.x:box.x + box.w] = cv2.resize(face, (FACE_PX, FACE_PX))
    image = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path, image


def make_pipeline(tmp_path, video, **web):
    from device.pipeline import Pipeline
    if not MODEL.exists():
        pytest.skip("the shipped model is missing")
    config = cfgmod.load(None, {"source": {"uri": str(video), "loop": True}, "detector": {"model": "short"},
                                "classifier": {"model": str(MODEL)}, "log": {"csv": str(tmp_path / "log.csv")},
                                "web": {"serve": "127.0.0.1:0", **web}})
    pipeline = Pipeline(config)
    return pipeline, pipeline.results.sinks[0]


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Runner:
    """Steps the pipeline in a thread (as `run` would) until stopped."""

    def __init__(self, pipeline, pause: float = 0.0):
        self.pipeline, self.pause, self.stop = pipeline, pause, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.results = []  # every frame's result, to match a screenshot with the frame it shows

    def _loop(self):
        while not self.stop.is_set() and (result := self.pipeline.step()) is not None:
            self.results.append(result)
            time.sleep(self.pause)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def box_drawn(shot: np.ndarray, bare: np.ndarray, box: Box, color: tuple[int, int, int],
              offset: tuple[int, int]) -> float:
    """Share of points along the box's left, right and bottom edges where the screenshot is much nearer the
    box colour than the bare video frame is (within 2 px, for JPEG's chroma smear and detector jitter)."""
    ox, oy = offset
    target = np.array(color, np.float32)
    points = ([(box.x, y) for y in range(box.y + 4, box.y + box.h - 4, 3)]
              + [(box.x + box.w, y) for y in range(box.y + 4, box.y + box.h - 4, 3)]
              + [(x, box.y + box.h) for x in range(box.x + 4, box.x + box.w - 4, 3)])
    hits = 0
    for x, y in points:
        shown = shot[oy + y - 2:oy + y + 3, ox + x - 2:ox + x + 3].reshape(-1, 3).astype(np.float32)
        plain = bare[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).astype(np.float32)
        if shown.shape != plain.shape or not len(plain):
            continue
        nearer = np.linalg.norm(plain - target, axis=1) - np.linalg.norm(shown - target, axis=1)
        hits += float(nearer.max()) > 25
    return hits / len(points)


def test_chromium_shows_the_live_video_with_boxes(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    video, bare = still_video(tmp_path / "still.avi")
    pipeline, web = make_pipeline(tmp_path, video)
    try:
        for _ in range(5):
            pipeline.step()
        assert web.counters()["web_frames_encoded"] == 0  # nobody watches: nothing is encoded
        shot_path = tmp_path / "shot.png"
        with Runner(pipeline, pause=0.02) as runner:
            result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                     f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900",
                                     "--timeout=6000", f"--screenshot={shot_path}", f"http://127.0.0.1:{web.port}/"],
                                    capture_output=True, text=True, timeout=90)
        assert result.returncode == 0 and shot_path.exists(), result.stderr[-2000:]
        faces = web.status()["current"]["faces"]
    finally:
        pipeline.close()
    shot = cv2.imread(str(shot_path))
    # Where the video is on the page: the bare frame matches the screenshot there (the drawing aside),
    # and the faces inside the boxes are the video's pixels.
    scores = cv2.matchTemplate(cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bare, cv2.COLOR_BGR2GRAY),
                               cv2.TM_CCOEFF_NORMED)
    _, best, _, offset = cv2.minMaxLoc(scores)
    assert best > 0.6, best
    ox, oy = offset
    for known in positions(0):
        inner = (slice(known.y + 40, known.y + known.h - 40), slice(known.x + 40, known.x + known.w - 40))
        shown = shot[oy + known.y + 40:oy + known.y + known.h - 40, ox + known.x + 40:ox + known.x + known.w - 40]
        assert np.abs(shown.astype(int) - bare[inner].astype(int)).mean() < 12
    assert len(faces) == 3
    for face in faces:
        box = Box(face["x"], face["y"], face["w"], face["h"])
        assert max(box.iou(known) for known in positions(0)) > 0.5
        # The screenshot shows a frame a little older than the status, and the box moves by a few pixels when
        # the looping video restarts (a fresh full detection), so the drawing is matched against the boxes
        # and labels this track had in the frames the pipeline produced while Chromium watched.
        shown = {(f.box, f.label) for r in runner.results for f in r.faces if f.track_id == face["track_id"]}
        assert shown and max(box_drawn(shot, bare, b, color_for(label), offset) for b, label in shown) > 0.8, \
            (face, shown)
    # and nowhere else: the grey background below the faces has no box colour
    empty = Box(20, 250, 180, 200)
    assert all(box_drawn(shot, bare, empty, color_for(f["label"]), offset) < 0.1 for f in faces)


def test_status_and_metrics_match_the_pipeline(tmp_path):
    text_string_to_metric_families = pytest.importorskip("prometheus_client.parser").text_string_to_metric_families

    video, _ = still_video(tmp_path / "still.avi", frames=12)
    pipeline, web = make_pipeline(tmp_path, video)
    try:
        last = None
        for _ in range(20):
            last = pipeline.step()
        base = f"http://127.0.0.1:{web.port}"
        code, body = get(base + "/api/status")
        assert code == 200
        status = json.loads(body)
        s = pipeline.stats
        assert (status["frames"], status["faces"], status["frames_without_faces"]) == (20, s.faces, 0)
        assert s.faces == 60 and status["dropped_frames"] == 0 and status["reconnects"] == 0
        assert status["current"]["frame"] == last.frame.index == 19
        assert [(f["track_id"], f["label"], f["x"], f["y"]) for f in status["current"]["faces"]] == \
            [(f.track_id, f.label, f.box.x, f.box.y) for f in last.faces]
        eight = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # the default model's
        assert all(list(f["probs"]) == eight for f in status["current"]["faces"])
        assert set(status["latency_ms"]) == {"decode", "detect", "classify", "track", "overlay", "output", "log"}
        assert abs(status["fps"] - s.fps()) < 0.5 * s.fps()
        # the timeline holds every face of every frame, by label
        assert sum(sum(b["counts"].values()) for b in status["timeline"]) == s.faces
        assert status["counters"]["csv_backlog"] == 0

        code, body = get(base + "/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        value = {f.name: f.samples[0].value for f in families.values() if f.name != "emotion_stage_latency_ms"}
        assert value["emotion_frames"] == 20 and value["emotion_faces"] == 60
        assert families["emotion_frames"].type == "counter" and families["emotion_fps"].type == "gauge"
        assert value["emotion_dropped_frames"] == 0 and value["emotion_reconnects"] == 0
        assert value["emotion_csv_backlog_rows"] == 0 and value["emotion_mqtt_queue"] == 0
        stages = {x.labels["stage"]: x.value for x in families["emotion_stage_latency_ms"].samples}
        assert stages["detect"] > 0 and len(stages) == 7
        assert get(base + "/nothing")[0] == 404
    finally:
        pipeline.close()


def read_stream(url: str, seconds: float) -> int:
    """JPEG parts received from an MJPEG stream in ``seconds``."""
    parts = 0
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while time.monotonic() < deadline:
            line = r.readline()
            if line.startswith(b"Content-Length:"):
                r.readline()
                data = r.read(int(line.split(b":")[1]))
                assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
                parts += 1
    return parts


def test_frames_are_encoded_only_while_watched_at_a_capped_rate(tmp_path):
    video, _ = still_video(tmp_path / "still.avi", frames=12)
    pipeline, web = make_pipeline(tmp_path, video, max_fps=4.0)
    try:
        with Runner(pipeline):
            assert wait_until(lambda: pipeline.stats.frames >= 10, 30)
            assert web.counters()["web_frames_encoded"] == 0
            frames0, start = pipeline.stats.frames, time.monotonic()
            parts = read_stream(f"http://127.0.0.1:{web.port}/stream.mjpg", 2.0)
            frames = pipeline.stats.frames - frames0
            assert wait_until(lambda: web.counters()["web_clients"] == 0, 5)
            watched = time.monotonic() - start  # until the server noticed that the viewer left
            encoded = web.counters()["web_frames_encoded"]
            time.sleep(0.5)
            assert web.counters()["web_frames_encoded"] == encoded  # the viewer left: no more encoding
    finally:
        pipeline.close()
    assert 2 <= parts <= 4.0 * 2.0 + 2  # capped at max_fps (4) over 2 s
    assert parts <= encoded <= 4.0 * watched + 2 and (frames <= 10 or encoded < frames)


def test_token_is_required_when_set(tmp_path, monkeypatch):
    video, _ = still_video(tmp_path / "still.avi", frames=4)
    monkeypatch.setenv("EMOTION_WEB_TOKEN", "s3cret")
    pipeline, web = make_pipeline(tmp_path, video)
    try:
        pipeline.step()
        base = f"http://127.0.0.1:{web.port}"
        for path in ("/", "/api/status", "/metrics", "/stream.mjpg"):
            assert get(base + path)[0] == 401
            assert get(base + path + "?token=wrong")[0] == 401
        assert get(base + "/api/status?token=s3cret")[0] == 200
        code, body = get(base + "/metrics", {"Authorization": "Bearer s3cret"})
        assert code == 200 and b"emotion_frames_total 1.0" in body
    finally:
        pipeline.close()


def test_loopback_by_default_and_a_warning_otherwise(tmp_path, monkeypatch, caplog):
    from device import web as webmod

    assert cfgmod.parse_serve("8080") == ("127.0.0.1", 8080) and cfgmod.parse_serve(":81") == ("127.0.0.1", 81)
    assert cfgmod.parse_serve("[::1]:9000") == ("::1", 9000)
    assert webmod.is_loopback("127.0.0.1") and webmod.is_loopback("::1") and not webmod.is_loopback("0.0.0.0")
    with pytest.raises(ConfigError, match="web.serve"):
        cfgmod.load(None, {"web": {"serve": "host:http"}})
    # A non-loopback address warns that video leaves the device (bound here on loopback all the same).
    monkeypatch.setattr(webmod, "is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING, logger="device.web"):
        view = webmod.WebView(cfgmod.WebConfig(serve="127.0.0.1:0"), ("happy",), cfgmod.OverlayConfig(), True)
        view.close()
    assert any("video of the camera leaves this device" in r.message for r in caplog.records)


def test_port_in_use_is_one_line(tmp_path):
    from tests.test_device import run_device
    port = free_port()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        result = run_device("run", "--source", "demo", "--max-frames", "1", "--serve", f"127.0.0.1:{port}")
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: web.serve: cannot listen on")


def test_every_consumer_gets_each_frame_once_and_a_stalled_viewer_blocks_nothing(tmp_path):
    """The loop's one call site: each result once, in order, with the stats already counting it; a viewer
    that connects and never reads holds up neither the loop nor other clients."""
    import socket

    video, _ = still_video(tmp_path / "still.avi", frames=12)
    pipeline, web = make_pipeline(tmp_path, video, max_fps=30.0)
    seen = []

    class Recorder:
        def publish(self, result, stats):
            seen.append((result.frame.index, len(result.faces), stats.frames))

        def counters(self):
            return {"recorded": len(seen)}

        def health(self):
            return ""

        def close(self):
            seen.append("closed")

    pipeline.results.add(Recorder())
    stalled = socket.create_connection(("127.0.0.1", web.port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        assert wait_until(lambda: web.counters()["web_clients"] == 1, 5)
        steps = []
        for _ in range(40):
            start = time.perf_counter()
            pipeline.step()
            steps.append(time.perf_counter() - start)
        assert web.counters()["web_frames_encoded"] > 1  # the stalled viewer was being sent frames
        code, body = get(f"http://127.0.0.1:{web.port}/api/status")  # another client is served meanwhile
        assert code == 200 and json.loads(body)["counters"]["recorded"] == 40
    finally:
        stalled.close()
        pipeline.close()
    assert seen[:-1] == [(i, 3, i + 1) for i in range(40)] and seen[-1] == "closed"
    assert np.median(steps) < 0.5
