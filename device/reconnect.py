"""A live source that failed (a camera unplugged, a stream dropped) is reopened with exponential backoff.

The first retry comes after half a second, each next one after twice as long, up to
``run.reconnect_max_delay``; after ``run.no_frame_timeout`` seconds without a frame the run gives up
with a SourceError (the service manager restarts the process).  A stop event ends the wait at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from device.config import RunConfig
from device.errors import SourceError
from device.frames import Frame
from device.sources import FrameSource

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5  # s before the first retry


def reconnect(error: SourceError, failed: FrameSource | None, *, open_source: Callable[[], FrameSource], uri: str,
              run: RunConfig, stop: threading.Event, status: Callable[[str], None]
              ) -> tuple[FrameSource | None, Frame | None]:
    """Reopen with ``open_source()`` until a frame comes: (the new source, its first frame).

    ``failed``, the source that raised ``error`` (None: none opened yet), is closed after the first wait;
    ``status`` gets each retry and the reconnect, for ``systemctl status``.  Once ``stop`` is set:
    (the source open at that moment or None, None).  A source opened here is closed again unless it is
    returned: on giving up (a SourceError) nothing is left open.
    """
    deadline = time.monotonic() + run.no_frame_timeout
    delay = FIRST_DELAY
    source = failed
    try:
        while time.monotonic() < deadline and not stop.is_set():
            log.warning("%s; retrying in %.1f s", error, delay)
            status(f"no camera: {error}; retrying in {delay:.1f} s")
            stop.wait(min(delay, max(0.0, deadline - time.monotonic())))  # never sleep past the deadline
            delay = min(delay * 2, run.reconnect_max_delay)
            if source is not None:
                source.close()
                source = None
            try:
                opened = open_source()
            except SourceError as exc:
                error = exc
                continue
            try:
                frame = opened.read()
            except SourceError as exc:
                opened.close()
                error = exc
                continue
            source = opened
            if frame is not None:
                log.info("camera %s delivers frames again", uri)
                status(f"camera {uri} connected")
                return source, frame
    except BaseException:
        if source is not None:
            source.close()
        raise
    if stop.is_set():
        return source, None
    if source is not None:
        source.close()
    raise SourceError(f"no frames for {run.no_frame_timeout:.0f} s ({error}); giving up")
