"""Face crop and model-input image: the same code prepares training images and camera faces."""

from __future__ import annotations

import cv2
import numpy as np

from device.frames import Box
from device.manifest import Crop


def to_model_image(image: np.ndarray, size: int, color: str, bgr: bool = False) -> np.ndarray:
    """uint8 HxW, HxWx1 or HxWx3 -> uint8 (size, size, channels) as the model takes it."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if color == "grayscale" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    elif color == "rgb":
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif bgr:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (size, size):
        image = resize_exact(image, size)
    return image.reshape(size, size, -1)


def resize_exact(image: np.ndarray, size: int) -> np.ndarray:
    """size x size by OpenCV paths that give the same bytes on every CPU (scripts/arm64_check.sh compares them).

    Plain INTER_LINEAR moved 48->64 FER faces by one grey level on a quarter of the pixels on arm64, and
    INTER_AREA at a fractional factor (96->80, 192->80, 231->64, ...) moves a few pixels by one there: both
    take float paths that differ by CPU.  INTER_LINEAR_EXACT is bit-exact by design, and INTER_AREA at a
    whole factor is an integer box average; a shrink is the first up to a multiple of ``size``, then the second.
    """
    height, width = image.shape[:2]
    ky, kx = -(-height // size), -(-width // size)  # grow to a whole multiple (smooth), then box-average
    if (height, width) != (ky * size, kx * size):
        image = cv2.resize(image, (kx * size, ky * size), interpolation=cv2.INTER_LINEAR_EXACT)
    if ky > 1 or kx > 1:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def crop_rect(box: Box, crop: Crop) -> Box:
    """The detector's box grown by the margin on each side (and to a square), in frame pixels."""
    w, h = box.w * (1 + 2 * crop.margin), box.h * (1 + 2 * crop.margin)
    if crop.square:
        w = h = max(w, h)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2 + crop.shift_y * box.h
    return Box(int(round(cx - w / 2)), int(round(cy - h / 2)), max(1, int(round(w))), max(1, int(round(h))))


def crop_face(frame_bgr: np.ndarray, box: Box, crop: Crop) -> np.ndarray:
    """The face region of a BGR frame; parts outside the frame repeat its edge pixels."""
    r = crop_rect(box, crop)
    height, width = frame_bgr.shape[:2]
    x0, y0, x1, y1 = r.x, r.y, r.x + r.w, r.y + r.h
    inside = frame_bgr[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if any(pad) and inside.size:
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_REPLICATE)
    return inside
