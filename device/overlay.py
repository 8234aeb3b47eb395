"""Draw results on a frame: a box per face with its label and confidence above it,
optional per-class bars, and FPS with per-stage latency in a corner."""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from device.config import OverlayConfig
from device.frames import Face

FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours for FER2013's classes; other labels get a stable colour from their name.
COLORS = {
    "angry": (40, 40, 230), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 250),
    "neutral": (200, 200, 200), "sad": (200, 120, 40), "surprise": (40, 160, 250),
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
    for face in faces:
        b, color = face.box, color_for(face.label)
        cv2.rectangle(image, (b.x, b.y), (b.x + b.w, b.y + b.h), color, thick)
        text = f"{face.label} {face.confidence:.0%}  #{face.track_id}"
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        top = max(0, b.y - th - base - 4)
        cv2.rectangle(image, (b.x, top), (b.x + tw + 6, top + th + base + 4), color, -1)
        cv2.putText(image, text, (b.x + 3, top + th + 2), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
        if cfg.bars:
            _bars(image, face, labels, b.x + b.w + 6, b.y, scale)
    if cfg.stats and (fps is not None or timings):
        parts = [f"{fps:5.1f} fps"] if fps is not None else []
        parts += [f"{k} {v:.1f}" for k, v in (timings or {}).items()]
        _corner_text(image, "  ".join(parts) + (" ms" if timings else ""), scale * 0.8)
    return image


def _bars(image: np.ndarray, face: Face, labels: tuple[str, ...], x: int, y: int, scale: float) -> None:
    row, width = int(18 * scale / 0.6), int(120 * scale / 0.6)
    if x + width > image.shape[1]:
        x = max(0, face.box.x - width - 6)
    for i, (label, p) in enumerate(zip(labels, face.probs)):
        top = y + i * row
        cv2.rectangle(image, (x, top), (x + int(width * float(p)), top + row - 3), color_for(label), -1)
        cv2.putText(image, f"{label} {float(p):.2f}", (x + 2, top + row - 6), FONT, scale * 0.6, (255, 255, 255),
                    1, cv2.LINE_AA)


def _corner_text(image: np.ndarray, text: str, scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    cv2.rectangle(image, (0, 0), (tw + 10, th + base + 8), (0, 0, 0), -1)
    cv2.putText(image, text, (5, th + 4), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
