"""The plain data that flows through the pipeline: frames, boxes, detections, faces."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8, as OpenCV delivers it
    index: int  # 0-based count of frames delivered by the source
    source: str  # the source's name; the file name for image inputs
    timestamp: datetime  # UTC, when the frame was read
    # The first frame of a scene that owes nothing to the frames before it: every still image is one.
    # Tracks, smoothing, hysteresis and the optical-flow follower start afresh on it.
    new_scene: bool = False


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner, width, height."""

    x: int
    y: int
    w: int
    h: int

    def iou(self, other: "Box") -> float:
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0

    def clip(self, width: int, height: int) -> "Box":
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(width, self.x + self.w), min(height, self.y + self.h)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float


@dataclass
class Face:
    """A tracked face in one frame, with its smoothed emotion estimate."""

    track_id: int
    box: Box
    score: float  # detector confidence
    probs: np.ndarray  # smoothed class probabilities (the CSV's and MQTT's)
    label: str  # displayed label (changes with hysteresis)
    confidence: float  # smoothed probability of the displayed label
    # What the overlay draws (label text and bars): the smoothed probabilities that chose the label, held while
    # another class leads by less than the hysteresis margin, so the label is their top class (device.tracker).
    # None: ``probs``.
    shown: np.ndarray | None = None


@dataclass
class FrameResult:
    frame: Frame
    faces: list[Face]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds
