"""What the stages of a run share: the stage names, a frame on its way, the run's counters, and the
interface that device.runner drives.

The pipeline (device.pipeline) implements :class:`Stages`; the runner drives any object that does, and
the consumers of results (device.results, device.mqtt, device.web) read :class:`Stats`.  Nothing here
imports more than device.frames.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from device.frames import Detection, Frame, FrameResult

STAGES = ("decode", "detect", "classify", "track", "overlay", "output", "log")  # each frame's timings, in order


@dataclass
class Work:
    """A frame on its way through the stages."""

    frame: Frame
    timings: dict[str, float]  # stage -> milliseconds
    detections: list[Detection] = field(default_factory=list)


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    classified: int = 0  # faces run through the classifier (fewer than faces with --classify-every > 1)
    frames_without_faces: int = 0
    skipped_frames: int = 0
    reconnects: int = 0
    started: float = field(default_factory=time.monotonic)
    first_read: float | None = None  # perf_counter when the first frame was asked for: processing starts
    last_done: float | None = None  # perf_counter when the last frame was finished
    recent: deque = field(default_factory=lambda: deque(maxlen=120))  # (time, per-stage ms)

    def add_frame(self, faces: int, timings: dict[str, float], at: float) -> None:
        """Count one finished frame with ``faces`` faces, and its stage timings (ms) at ``at`` (perf_counter)."""
        self.frames += 1
        self.faces += faces
        self.frames_without_faces += not faces
        self.last_done = at
        self.recent.append((at, timings))

    def processing_fps(self) -> float:
        """Frames over the time from the first read to the last finished frame: without start-up (models,
        camera) or what closing takes (the MQTT drain)."""
        if not self.frames or self.first_read is None or self.last_done is None:
            return 0.0
        span = self.last_done - self.first_read
        return self.frames / span if span > 0 else 0.0

    def fps(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return (len(self.recent) - 1) / span if span > 0 else 0.0

    def median_ms(self) -> dict[str, float]:
        if not self.recent:
            return {}
        keys = self.recent[-1][1].keys()
        return {k: float(np.median([t[k] for _, t in self.recent if k in t])) for k in keys}

    def snapshot(self) -> "Stats":
        """A copy that another thread can read while the loop appends.

        ``deque.copy()`` runs in C without releasing the GIL, so it never sees a half-done append.
        """
        return dataclasses.replace(self, recent=self.recent.copy())


class Stages(Protocol):
    """One frame's work in three parts.  Each part is only ever run by one thread at a time, and
    ``finish_stage`` sees the frames in the order ``read_stage`` gave them."""

    def read_stage(self) -> Work | None:
        """The next frame, read and decoded; None at the end of a finite source."""

    def detect_stage(self, work: Work) -> Work:
        """The frame's face detections."""

    def finish_stage(self, work: Work) -> FrameResult:
        """Classify, track, draw, write: everything that has to see the frames in order."""
