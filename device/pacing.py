"""Play a file at its own frame rate: a video, the demo or a photo folder, when a person watches.

Files are read as fast as the pipeline goes (a folder of photos, a night's
recording), except when someone watches them: a window, an HDMI screen or the
web view (``--realtime`` asks for it anywhere).  Then :class:`Paced` holds each
frame back until its time on the source's own clock, so the demo plays for its
ten seconds and ``--loop`` does not spin every core.  Cameras and streams bring
their own clock and are never paced.
"""

from __future__ import annotations

import threading
import time

from device.config import Config
from device.frames import Frame
from device.sources import FrameSource

def watched(config: Config) -> bool:
    """A person sees the frames: a display, the DRM screen or the web view, or ``--realtime``."""
    return config.source.realtime or config.output.target in ("display", "drm") or bool(config.web.serve)


class Paced:
    """``source`` delivered no faster than ``rate`` frames a second, on its own clock; everything else
    (index, skipped, total, close...) is the wrapped source's."""

    def __init__(self, source: FrameSource, rate: float, stop: threading.Event | None = None):
        self.source, self.interval, self.stop = source, 1.0 / rate, stop or threading.Event()
        self._start: float | None = None
        self._count = 0

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def read(self) -> Frame | None:
        frame = self.source.read()
        if frame is None:
            return None
        now = time.monotonic()
        if self._start is None or now - (self._start + self._count * self.interval) > 1.0:
            self._start, self._count = now, 0  # the first frame, or far behind (a slow machine): no catching up
        wait = self._start + self._count * self.interval - now
        if wait > 0:
            self.stop.wait(wait)
        self._count += 1
        return frame

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pace(source: FrameSource, config: Config, stop: threading.Event | None = None) -> FrameSource | Paced:
    """``source`` paced at its own rate when it has one (not a camera) and someone watches."""
    rate = source.rate
    if source.live or not rate or not watched(config):
        return source
    return Paced(source, rate, stop)
