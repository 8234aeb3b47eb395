"""Draw results on a frame: a box per face with its label and confidence above it,
optional per-class bars, and FPS with per-stage latency in a corner.

The label's percentage and the bars show ``face.shown``, the smoothed probabilities that chose the label
(device.tracker), so the label is always the longest bar.  The bars go beside the face (right, else left,
else below) where they cover no other face and stay inside the frame; a face with no such place gets none."""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from device.config import OverlayConfig
from device.frames import Box, Face

FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours for the shipped models' classes (FER+'s 8); other labels get a stable colour from their name.
COLORS = {
    "angry": (40, 40, 230), "contempt": (110, 80, 150), "disgust": (40, 140, 40), "fear": (160, 60, 160),
    "happy": (40, 200, 250), "neutral": (200, 200, 200), "sad": (200, 120, 40), "surprise": (40, 160, 250),
}


def color_for(label: str) -> tuple[int, int, int]:
    if label in COLORS:
        return COLORS[label]
    h = zlib.crc32(label.encode())
    return (60 + h % 180, 60 + (h >> 8) % 180, 60 + (h >> 16) % 180)


def draw(image: np.ndarray, faces: list[Face], labels: tuple[str, ...], cfg: OverlayConfig,
         fps: float | None = None, timings: dict[str, float] | None = None) -> np.ndarray:
    """Draws in place and returns ``image``."""
    scale = max(0.4, image.shape[0] / 900)
    thick = max(1, int(round(scale * 2)))
    # each face's label strip above its box: (text, its size, its top); bars cover neither strips nor boxes
    notes = []
    for face in faces:
        text = f"{face.label} {float(shown(face)[labels.index(face.label)]):.0%}  #{face.track_id}"
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        notes.append((text, tw, th, base, max(0, face.box.y - th - base - 4)))
    covered = [Box(f.box.x, top, max(f.box.w, tw + 6), f.box.y + f.box.h - top)
               for f, (_, tw, _, _, top) in zip(faces, notes)]
    for face, (text, tw, th, base, top) in zip(faces, notes):
        b, color = face.box, color_for(face.label)
        cv2.rectangle(image, (b.x, b.y), (b.x + b.w, b.y + b.h), color, thick)
        cv2.rectangle(image, (b.x, top), (b.x + tw + 6, top + th + base + 4), color, -1)
        cv2.putText(image, text, (b.x + 3, top + th + 2), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    if cfg.bars:
        for i, face in enumerate(faces):
            place = bars_box(face.box, covered[:i] + covered[i + 1:], len(labels), image.shape, scale)
            if place is not None:
                _bars(image, face, labels, place, scale)
                covered.append(place)  # the next face's bars keep off these
    if cfg.stats and (fps is not None or timings):
        parts = [f"{fps:5.1f} fps"] if fps is not None else []
        parts += [f"{k} {v:.1f}" for k, v in (timings or {}).items()]
        _corner_text(image, "  ".join(parts) + (" ms" if timings else ""), scale * 0.8)
    return image


def shown(face: Face) -> np.ndarray:
    """The probabilities drawn for ``face``: those that chose its label."""
    return face.probs if face.shown is None else face.shown


def bars_box(box: Box, others: list[Box], classes: int, shape: tuple[int, ...], scale: float) -> Box | None:
    """Where the bars of the face in ``box`` go: beside it (right, left, below), inside the frame, over none
    of the ``others``; None when there is no such place."""
    row, width = int(18 * scale / 0.6), int(120 * scale / 0.6)
    height, gap = classes * row, 6
    y = min(max(0, box.y), shape[0] - height)
    for x, top in ((box.x + box.w + gap, y), (box.x - width - gap, y), (box.x, box.y + box.h + gap)):
        place = Box(x, top, width, height)
        inside = x >= 0 and top >= 0 and x + width <= shape[1] and top + height <= shape[0]
        if inside and all(place.iou(other) == 0 for other in others):
            return place
    return None


def _bars(image: np.ndarray, face: Face, labels: tuple[str, ...], place: Box, scale: float) -> None:
    x, y, width, row = place.x, place.y, place.w, place.h // len(labels)
    for i, (label, p) in enumerate(zip(labels, shown(face))):
        top = y + i * row
        cv2.rectangle(image, (x, top), (x + int(width * float(p)), top + row - 3), color_for(label), -1)
        cv2.putText(image, f"{label} {float(p):.2f}", (x + 2, top + row - 6), FONT, scale * 0.6, (255, 255, 255),
                    1, cv2.LINE_AA)


def _corner_text(image: np.ndarray, text: str, scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    cv2.rectangle(image, (0, 0), (tw + 10, th + base + 8), (0, 0, 0), -1)
    cv2.putText(image, text, (5, th + 4), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
