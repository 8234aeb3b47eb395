"""Frame sources behind one interface, chosen by one ``--source`` string.

``open_source(uri)`` normalises every shorthand in one place:

==========================  ==================================================
``auto``                    the first camera found (picamera2, then /dev/video*); none at
                            all is an error at once (NoCameraError), not a wait
``demo`` or ``demo:N``      built-in moving faces (2, or N of 1..2); no camera, no download
``picamera2:N``             Raspberry Pi camera N (apt's picamera2, imported lazily)
``/dev/videoN`` or ``N``    V4L2 / USB camera through OpenCV
``... ! appsink``           a GStreamer pipeline (Jetson CSI: nvarguscamerasrc)
``rtsp://``, ``http(s)://`` a network stream
a video file                read to its end (``loop`` restarts it)
an image file, a folder,    images in sorted order, each a new scene;
or a glob                   unreadable ones are skipped and counted
==========================  ==================================================

``read()`` returns the next :class:`Frame`, or None when a finite source has
ended.  A live source that fails raises :class:`SourceError`; the caller
decides whether to reconnect.  A video file whose container states more
frames than could be read sets ``ended_early``.  Network streams are opened
and read in a worker thread: a camera that accepts and never answers cannot
hold up a stop (``stop`` makes the wait return at once).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import math
import os
import queue
import struct
import threading
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from device.config import SourceConfig
from device.errors import NoCameraError, SourceError
from device.frames import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264"}
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp")
STREAM_TIMEOUT_MS = 10_000  # OpenCV's own open/read timeouts for streams (30 s by default): frees stuck workers
KNOWN = "auto, demo[:N], picamera2:N, /dev/videoN, N, rtsp://..., a GStreamer pipeline, a video, an image, a folder or glob"
DEV = Path("/dev")  # where ``auto`` looks for V4L2 nodes (tests point it at a folder of their own)
VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
CAP_CAPTURE = 0x00000001 | 0x00001000  # V4L2_CAP_VIDEO_CAPTURE, V4L2_CAP_VIDEO_CAPTURE_MPLANE
CAP_M2M = 0x00004000 | 0x00008000  # memory-to-memory: codecs and scalers, never a camera
CAP_DEVICE_CAPS = 0x80000000  # device_caps is filled in (this node's own capabilities)
# Drivers whose capture nodes are not cameras: a Raspberry Pi has them with no camera attached.
NOT_CAMERAS = {"bcm2835-codec", "bcm2835-isp", "rpi-hevc-dec", "pispbe"}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FrameSource:
    """Base class: ``read()`` a frame at a time; a context manager that closes itself."""

    live = False  # a camera or stream (reconnect on failure) rather than a file
    name = "source"
    rate: float | None = None  # frames a second of a file's own clock (device.pacing); None for cameras

    def __init__(self) -> None:
        self.index = 0
        self.skipped = 0  # unreadable frames
        self.ended_early: tuple[int, int] | None = None  # (frames read, frames the container states)

    def read(self) -> Frame | None:
        raise NotImplementedError

    @property
    def total(self) -> int | None:
        """Frames this source will deliver, when known (files read once); None otherwise."""
        return None

    def close(self) -> None:
        pass

    def _frame(self, image: np.ndarray, name: str | None = None, new_scene: bool = False) -> Frame:
        frame = Frame(image, self.index, name or self.name, _now(), new_scene)
        self.index += 1
        return frame

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageFilesSource(FrameSource):
    """Image files in sorted order; each frame's source is its file name.  Photos are not a video: every
    image starts a new scene, so its result never depends on the images before it."""

    rate = 1.0  # when paced (device.pacing), each photo is shown for a second

    def __init__(self, paths: list[Path], loop: bool = False):
        super().__init__()
        if not paths:
            raise SourceError("no images found for --source")
        self.paths, self.loop, self._next = paths, loop, 0
        self.name = str(paths[0].parent)

    @property
    def total(self) -> int | None:
        return None if self.loop else len(self.paths)

    def read(self) -> Frame | None:
        while True:
            if self._next >= len(self.paths):
                if not self.loop:
                    return None
                self._next = 0
            path = self.paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return self._frame(image, path.name, new_scene=True)
            self.skipped += 1
            log.warning("skipped unreadable image %s", path)


class VideoCaptureSource(FrameSource):
    """OpenCV VideoCapture: files, V4L2 cameras, GStreamer pipelines and network streams."""

    def __init__(self, target: str | int, name: str, live: bool, cfg: SourceConfig, api: int = cv2.CAP_ANY):
        super().__init__()
        self.target, self.name, self.live, self.loop = target, name, live, cfg.loop and not live
        self._cap = cv2.VideoCapture(target, api)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open {name}")
        self.stated_frames = 0 if live else int(max(0.0, self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        stated_rate = self._cap.get(cv2.CAP_PROP_FPS)
        self.rate = None if live else (stated_rate if 1 <= stated_rate <= 240 else 30.0)
        if live and api != cv2.CAP_GSTREAMER:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            self._cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue

    @property
    def total(self) -> int | None:
        if self.live or self.loop:
            return None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))  # from the container; 0 when unknown
        return count if count > 0 else None

    def read(self) -> Frame | None:
        ok, image = self._cap.read()
        if ok and image is not None:
            return self._frame(image)
        if self.live:
            raise SourceError(f"{self.name} stopped delivering frames")
        if self.loop and self.index > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
            if ok and image is not None:
                return self._frame(image)
        # A count stated by the container, one frame of slack for containers that estimate it.
        if not self.loop and self.index < self.stated_frames - 1:
            self.ended_early = (self.index, self.stated_frames)
        return None

    def close(self) -> None:
        self._cap.release()


class StreamSource(FrameSource):
    """A network stream, opened and read by a worker thread that a stop can abandon.

    OpenCV's open and read block in native code for up to 30 s on a camera that
    accepts and never answers, where no signal handler can run.  The worker
    hands over the newest frame (or the error that ended it); the caller waits
    in short slices and gives up at once when ``stop`` is set.
    """

    live = True
    _OPENED = object()

    def __init__(self, uri: str, name: str, stop: threading.Event | None = None):
        super().__init__()
        self.name = name
        self._stop = stop or threading.Event()
        self._closed = threading.Event()
        self._items: queue.Queue = queue.Queue(maxsize=1)
        self._first = None
        threading.Thread(target=self._work, args=(uri,), name=f"stream {name}", daemon=True).start()
        item = self._next()
        if item is None:
            self.close()
            raise SourceError(f"stopped while opening {name}")
        if isinstance(item, SourceError):
            raise item
        if item is not self._OPENED:
            self._first = item

    def _work(self, uri: str) -> None:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                  STREAM_TIMEOUT_MS]
        cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        try:
            if not cap.isOpened():
                self._put(SourceError(f"cannot open {self.name}"))
                return
            self._put(self._OPENED)
            while not self._closed.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    self._put(SourceError(f"{self.name} stopped delivering frames"))
                    return
                self._put(image)
        finally:
            cap.release()

    def _put(self, item) -> None:
        """Keep only the newest item (the newest frame, not a stale queue); the worker is the only producer."""
        try:
            self._items.get_nowait()
        except queue.Empty:
            pass
        self._items.put_nowait(item)

    def _next(self):
        """The worker's next item; None once ``stop`` is set or the source is closed."""
        while not self._stop.is_set() and not self._closed.is_set():
            try:
                return self._items.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def read(self) -> Frame | None:
        if self._first is not None:
            image, self._first = self._first, None
            return self._frame(image)
        while True:
            item = self._next()
            if item is None:
                return None  # stopped
            if isinstance(item, SourceError):
                raise item
            if item is not self._OPENED:
                return self._frame(item)

    def close(self) -> None:
        self._closed.set()  # the worker releases the capture itself, once OpenCV returns


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera through picamera2 (an apt package on Raspberry Pi OS)."""

    live = True

    def __init__(self, camera: int, cfg: SourceConfig):
        super().__init__()
        try:
            from picamera2 import Picamera2
        except ModuleNotFoundError:
            raise SourceError("picamera2 is not installed: on Raspberry Pi OS, `sudo apt install python3-picamera2`"
                              " and create the venv with --system-site-packages") from None
        self.name = f"picamera2:{camera}"
        try:
            self.camera = Picamera2(camera)
            # RGB888 is B,G,R in memory: OpenCV's order.
            config = self.camera.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"},
                controls={"FrameRate": cfg.fps})
            self.camera.configure(config)
            self.camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"cannot start {self.name}: {exc}") from None

    def read(self) -> Frame | None:
        try:
            return self._frame(self.camera.capture_array("main"))
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"{self.name} failed: {exc}") from None

    def close(self) -> None:
        try:
            self.camera.stop()
            self.camera.close()
        except (RuntimeError, OSError):
            pass


def demo_portrait() -> np.ndarray:
    """Grace Hopper's portrait, which ships with matplotlib (a dependency of mediapipe)."""
    try:
        from matplotlib import cbook
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (ImportError, OSError, ValueError):
        raise SourceError("the demo source needs matplotlib's sample data (pip install matplotlib)") from None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"cannot read the demo image {path}")
    return image


class DemoSource(FrameSource):
    """Copies of a real portrait gliding over a background: shows the pipeline with no camera."""

    name = "demo"
    rate = 30.0

    def __init__(self, cfg: SourceConfig, faces: int = 2, frames: int = 300):
        super().__init__()
        if faces not in (1, 2):
            raise SourceError(f"the demo source shows 1 or 2 faces (demo:1, demo:2), not {faces}")
        self.width, self.height, self.frames, self.loop = cfg.width, cfg.height, frames, cfg.loop
        self.faces = faces
        portrait = demo_portrait()
        scale = 0.55 * self.height / portrait.shape[0]
        self.big = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        small = cv2.resize(portrait, None, fx=scale * 0.7, fy=scale * 0.7, interpolation=cv2.INTER_AREA)
        self.small = np.ascontiguousarray(small[:, ::-1])
        ramp = np.linspace(40, 110, self.width, dtype=np.uint8)
        self.background = np.dstack([np.tile(ramp, (self.height, 1))] * 3)

    def read(self) -> Frame | None:
        if self.index >= self.frames and not self.loop:
            return None
        t = self.index / 30.0
        image = self.background.copy()
        w = self.width
        self._paste(image, self.big, int(w * 0.05 + w * 0.08 * (1 + math.sin(t))), int(self.height * 0.1))
        if self.faces == 2:
            self._paste(image, self.small, int(w * 0.55 + w * 0.08 * (1 + math.cos(t * 0.7))),
                        int(self.height * 0.3))
        return self._frame(image)

    @staticmethod
    def _paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
        h = min(tile.shape[0], canvas.shape[0] - y)
        w = min(tile.shape[1], canvas.shape[1] - x)
        canvas[y:y + h, x:x + w] = tile[:h, :w]


def _image_paths(spec: str) -> list[Path] | None:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    if any(ch in spec for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    return None


def is_camera(capability: bytes) -> bool:
    """From a node's struct v4l2_capability: it captures video and is not a codec, scaler or ISP."""
    driver = capability[:16].split(b"\0")[0].decode(errors="replace")
    caps, device_caps = struct.unpack_from("<II", capability, 84)
    if caps & CAP_DEVICE_CAPS:
        caps = device_caps
    return bool(caps & CAP_CAPTURE) and not caps & CAP_M2M and driver not in NOT_CAMERAS


def _may_be_camera(node: Path) -> bool:
    """What the node says it is (VIDIOC_QUERYCAP); a node that cannot be asked (no permission) may be one."""
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        return is_camera(fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(104)))
    except OSError:
        return True
    finally:
        os.close(fd)


def camera_nodes(dev: Path | None = None) -> list[Path]:
    """The V4L2 nodes that may be cameras (``/dev/video0``, ...), in number order."""
    nodes = [p for p in (dev or DEV).glob("video*") if p.name[5:].isdigit()]
    return [p for p in sorted(nodes, key=lambda p: int(p.name[5:])) if _may_be_camera(p)]


def libcamera_cameras() -> int:
    """Cameras that libcamera sees through picamera2 (0 without picamera2)."""
    try:
        from picamera2 import Picamera2
        return len(Picamera2.global_camera_info())
    except (ModuleNotFoundError, RuntimeError, OSError):
        return 0


def _first_camera(cfg: SourceConfig) -> FrameSource:
    if libcamera_cameras():
        return Picamera2Source(0, cfg)
    nodes = camera_nodes()
    if not nodes:  # nothing to wait for: say so now, not after no_frame_timeout of retries
        raise NoCameraError(f"no camera found: no camera device in {DEV} (video*) and no libcamera camera; plug one "
                            "in, or choose a source with --source (e.g. --source demo, --source video.mp4, "
                            "--source rtsp://...)")
    for node in nodes:
        try:
            source = VideoCaptureSource(str(node), str(node), True, cfg, cv2.CAP_V4L2)
        except SourceError:
            continue
        ok, _ = source._cap.read()
        if ok:
            return source
        source.close()
    raise SourceError(f"no camera delivers frames ({', '.join(map(str, nodes))}); choose a source with --source "
                      f"(e.g. --source demo, --source video.mp4, --source /dev/video0, --source picamera2:0)")


def is_live(uri: str) -> bool:
    """Cameras and streams, which can come back after a failure (files and the demo cannot)."""
    return (uri == "auto" or uri.startswith(("picamera2", "/dev/video")) or uri.isdigit() or "!" in uri
            or ("://" in uri and uri.split("://")[0] in NETWORK_SCHEMES))


def open_source(uri: str, cfg: SourceConfig | None = None, stop: threading.Event | None = None) -> FrameSource:
    """The one factory: every source string is interpreted here.  ``stop`` abandons a network stream's wait."""
    cfg = cfg or SourceConfig()
    if uri == "auto":
        return _first_camera(cfg)
    if uri == "demo" or uri.startswith("demo:"):
        count = uri.partition(":")[2] or "2"
        if not count.isdigit():
            raise SourceError(f"bad demo face count in {uri!r}; use demo, demo:1 or demo:2")
        return DemoSource(cfg, int(count))
    if uri.startswith("picamera2"):
        _, _, number = uri.partition(":")
        if number and not number.isdigit():
            raise SourceError(f"bad camera number in {uri!r}; use picamera2:0")
        return Picamera2Source(int(number or 0), cfg)
    if uri.isdigit() or uri.startswith("/dev/video"):
        index = int(uri) if uri.isdigit() else uri
        return VideoCaptureSource(index, uri if not uri.isdigit() else f"/dev/video{uri}", True, cfg, cv2.CAP_V4L2)
    if "!" in uri:
        return VideoCaptureSource(uri, "gstreamer", True, cfg, cv2.CAP_GSTREAMER)
    if "://" in uri and uri.split("://")[0] in NETWORK_SCHEMES:
        return StreamSource(uri, uri.split("@")[-1], stop)
    images = _image_paths(uri)
    if images is not None:
        if not images:
            raise SourceError(f"no images in {uri}")
        return ImageFilesSource(images, cfg.loop)
    path = Path(uri)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            log.info("treating %s as a video file", path)
        return VideoCaptureSource(str(path), path.name, False, cfg, cv2.CAP_FFMPEG)
    raise SourceError(f"unknown source {uri!r}: no such file; --source takes {KNOWN}")
