"""Where annotated frames go, chosen by one ``--output`` string.

``none`` (headless), ``display`` (an OpenCV window, for an HDMI screen with a
desktop), ``drm`` (picamera2's DRM preview with an overlay, for a Pi HDMI
screen without a desktop), ``FILE.mp4`` (annotated video) or ``DIR/``
(annotated images, named after their source images).  Every sink has
``write(image, frame) -> bool`` (False: the viewer asked to quit) and ``close()``.

An .mp4 is H.264 ('avc1'), which browsers play, where this OpenCV can encode it
(probed once by writing a tiny file: OpenCV's pip wheels ship no H.264 encoder);
otherwise MPEG-4 Part 2 ('mp4v'), and the log says how to play or convert it.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from device import outpaths
from device.config import OutputConfig
from device.errors import ConfigError, WriteError
from device.frames import Frame
from device.manifest import write_atomic
from device.native import quiet_native_stderr

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
H264 = "avc1"


@functools.cache
def mp4_fourcc() -> str:
    """'avc1' (H.264) where this OpenCV can write it, else 'mp4v': found once, by writing a tiny file."""
    with tempfile.TemporaryDirectory() as folder, quiet_native_stderr():  # FFmpeg says why it cannot, on fd 2
        path = os.path.join(folder, "probe.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*H264), 30, (64, 48))
        ok = writer.isOpened()
        if ok:
            writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.release()
        ok = ok and os.path.getsize(path) > 0
    return H264 if ok else VIDEO_SUFFIXES[".mp4"]


class Sink:
    needs_overlay = True
    transparent = False  # draw on a black canvas that the sink shows over the camera image

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        return True

    def close(self) -> None:
        pass


class NullSink(Sink):
    """Headless: draws nothing, keeps nothing."""

    needs_overlay = False


class DisplaySink(Sink):
    WINDOW = "emotion"

    def __init__(self, fullscreen: bool):
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise ConfigError("output.target display: no desktop display (DISPLAY is unset); use --output drm on a"
                              " Pi console, a FILE.mp4, or none")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
            if fullscreen:
                cv2.setWindowProperty(self.WINDOW, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        except cv2.error as exc:
            raise ConfigError(f"output.target display: cannot open a window: {exc}") from None

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        cv2.imshow(self.WINDOW, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)  # q or Esc quits

    def close(self) -> None:
        cv2.destroyAllWindows()


class DrmSink(Sink):
    """picamera2's DRM preview shows the camera; the annotations go on top with ``set_overlay``."""

    transparent = True

    def __init__(self, source):
        camera = getattr(source, "camera", None)
        if camera is None:
            raise ConfigError("output.target drm needs a picamera2 source (--source picamera2:0)")
        from picamera2 import Preview
        self.camera = camera
        camera.stop()
        camera.start_preview(Preview.DRM)
        camera.start()

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        # ``image`` holds only the drawing (black elsewhere): black becomes transparent.
        rgba = cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)
        rgba[..., 3] = np.where(image.any(axis=2), 255, 0).astype(np.uint8)
        self.camera.set_overlay(rgba)
        return True

    def close(self) -> None:
        try:
            self.camera.stop_preview()
        except (RuntimeError, OSError):
            pass


class VideoFileSink(Sink):
    """Annotated video, written to a temp file and renamed when complete."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        outpaths.check_file(path, "--output")
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        self.fourcc = mp4_fourcc() if suffix == ".mp4" else VIDEO_SUFFIXES.get(suffix, "mp4v")

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*self.fourcc)
            self._writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (image.shape[1], image.shape[0]))
            if not self._writer.isOpened():
                raise ConfigError(f"output.target: cannot write video {self.path}")
        self._writer.write(image)
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            os.replace(self.tmp, self.path)
            log.info("wrote %s", self.path)
            if self.path.suffix.lower() == ".mp4" and self.fourcc != H264:
                h264 = self.path.with_name(f"{self.path.stem}-h264.mp4")
                log.info("%s is MPEG-4 Part 2 ('mp4v'): this OpenCV has no H.264 encoder, and browsers play only "
                         "H.264; play it with VLC or mpv, or convert it: ffmpeg -i %s -c:v libx264 -pix_fmt yuv420p "
                         "-movflags +faststart %s", self.path, self.path, h264)


class ImageDirSink(Sink):
    """One annotated image per frame, named after the source image (photo mode)."""

    def __init__(self, folder: Path):
        self.folder = folder
        outpaths.check_dir(folder, "--output")
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        name = Path(frame.source).name
        if not cv2.haveImageWriter(name):  # frames of a video or a camera
            name = f"frame_{frame.index:06d}.jpg"
        ok, data = cv2.imencode(Path(name).suffix, image)
        if ok:
            try:
                write_atomic(self.folder / name, data.tobytes())
            except OSError as exc:
                raise WriteError(f"--output {self.folder / name}: cannot write: {exc.strerror or exc}") from None
        return True


def _is_dir_target(target: str) -> bool:
    return target.endswith(("/", os.sep)) or Path(target).is_dir()


def check_target(cfg: OutputConfig) -> None:
    """At start, before the camera opens: a file or folder target can be written (else exit 73)."""
    if cfg.target in ("none", "display", "drm"):
        return
    if _is_dir_target(cfg.target):
        outpaths.check_dir(cfg.target, "--output")
    elif Path(cfg.target).suffix.lower() in VIDEO_SUFFIXES:
        outpaths.check_file(cfg.target, "--output")


def open_sink(cfg: OutputConfig, source=None, fps: float = 30.0) -> Sink:
    target = cfg.target
    if target == "none":
        return NullSink()
    if target == "display":
        return DisplaySink(cfg.fullscreen)
    if target == "drm":
        return DrmSink(source)
    if _is_dir_target(target):
        return ImageDirSink(Path(target))
    if Path(target).suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSink(Path(target), fps)
    raise ConfigError(f"output.target: {target!r} is not none, display, drm, a .mp4/.avi/.mkv file or a DIR/")
