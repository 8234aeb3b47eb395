"""Face detection with MediaPipe's Tasks FaceDetector.

Two models (provisioned by ``python -m device models``):

- full-range (sparse, 192 px input): finds faces down to about 32 px wide in
  640x480, i.e. across a room; about 6 ms a frame;
- short-range (128 px input): faces within about 1.1 m of a webcam, 2 ms, and
  more confident on close-ups that full-range scores low.

``auto`` runs full-range and falls back to short-range on the same frame when
full-range finds nothing.  ``tiles`` > 1 also runs on overlapping tiles and
merges everything with non-maximum suppression, for crowds in large frames.
"""

from __future__ import annotations

import logging
from importlib import metadata

import cv2
import numpy as np

from device.config import DetectorConfig
from device.errors import ModelError
from device.facemodels import model_path
from device.frames import Box, Detection
from device.locations import face_models_dir
from device.native import lacks_arm64_atomics, missing_library_message, quiet_native_stderr, without_tensorflow

log = logging.getLogger(__name__)

MODEL_FILES = {"full": "face_detection_full_range_sparse.tflite", "short": "face_detection_short_range.tflite"}
NEAR = 0.15  # candidates this far under min_confidence are counted as near misses (see device.scheduler)
TILE_OVERLAP = 0.25
NMS_IOU = 0.4


def _create(path, min_confidence: float) -> object:
    from mediapipe.tasks.python import BaseOptions, vision
    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                         running_mode=vision.RunningMode.IMAGE,
                                         min_detection_confidence=min_confidence)
    try:
        with quiet_native_stderr():
            return vision.FaceDetector.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load face model {path}: {exc}") from None
    except OSError as exc:  # its native library is loaded here, on first use (ctypes)
        raise native_error(exc) from None


def native_error(exc: OSError | ImportError) -> ModelError:
    """MediaPipe's native library failed to load: name the missing system library and its package."""
    return ModelError(missing_library_message("MediaPipe's native library", exc)
                      or f"cannot load MediaPipe's native library: {exc}")


class FaceDetector:
    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        try:
            with without_tensorflow():
                import mediapipe as mp
                from mediapipe.tasks.python import vision  # noqa: F401  (the part that imports TensorFlow)
        except ModuleNotFoundError:
            raise ModelError("mediapipe is not installed: pip install '.[device]'") from None
        except (ImportError, OSError) as exc:  # versions that load the native library at import
            raise native_error(exc) from None
        version = metadata.version("mediapipe")
        if lacks_arm64_atomics() and not version.startswith("0."):
            # Its aarch64 wheels (1.0.0 and 1.2.3 checked) need Armv8.1 atomics and stop an Armv8.0 CPU with a
            # bare SIGILL; their own message would go where quiet_native_stderr() sends it.
            raise ModelError(f"mediapipe {version} needs an Armv8.1 CPU (LSE atomics) and this one lacks them (a "
                             "Raspberry Pi 4's Cortex-A72 is Armv8.0): use a Raspberry Pi 5 or another CPU with "
                             "'atomics' in /proc/cpuinfo")
        self._mp = mp
        names = ["full", "short"] if cfg.model == "auto" else [cfg.model]
        folder = face_models_dir(cfg.models_dir)
        paths = {name: model_path(folder, MODEL_FILES[name]) for name in names}
        self._models = {name: _create(path, max(0.0, cfg.min_confidence - NEAR)) for name, path in paths.items()}
        self.near_misses = 0  # candidates just under min_confidence in the last detect(): maybe a face
        log.info("face detector: %s (min confidence %.2f, tiles %d)", cfg.model, cfg.min_confidence, cfg.tiles)

    def _run(self, name: str, rgb: np.ndarray) -> list[Detection]:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        result = self._models[name].detect(image)
        out = []
        for d in result.detections:
            score = d.categories[0].score if d.categories else 0.0
            if score >= self.cfg.min_confidence:
                b = d.bounding_box
                out.append(Detection(Box(b.origin_x, b.origin_y, b.width, b.height), float(score)))
            else:
                self.near_misses += 1
        return out

    def _detect_region(self, rgb: np.ndarray) -> list[Detection]:
        if self.cfg.model != "auto":
            return self._run(self.cfg.model, rgb)
        return self._run("full", rgb) or self._run("short", rgb)

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        """Faces in a BGR frame, boxes clipped to the frame."""
        height, width = bgr.shape[:2]
        self.near_misses = 0
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        found = self._detect_region(rgb)
        if self.cfg.tiles > 1:
            for x, y, w, h in tile_grid(width, height, self.cfg.tiles):
                tile = np.ascontiguousarray(rgb[y:y + h, x:x + w])
                found += [Detection(Box(d.box.x + x, d.box.y + y, d.box.w, d.box.h), d.score)
                          for d in self._detect_region(tile)]
            found = merge(found)
        boxes = [Detection(d.box.clip(width, height), d.score) for d in found]
        return [d for d in boxes if d.box.w > 1 and d.box.h > 1]

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models = {}


def tile_grid(width: int, height: int, n: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """N x N tiles covering the frame, neighbours overlapping by ``overlap`` of a tile."""
    tw = int(np.ceil(width / (n - (n - 1) * overlap)))
    th = int(np.ceil(height / (n - (n - 1) * overlap)))
    xs = np.linspace(0, width - tw, n).round().astype(int)
    ys = np.linspace(0, height - th, n).round().astype(int)
    return [(int(x), int(y), tw, th) for y in ys for x in xs]


def merge(detections: list[Detection], iou: float = NMS_IOU, inside: float = 0.7) -> list[Detection]:
    """Non-maximum suppression (OpenCV's) over detections from the frame and its tiles, then
    drop boxes lying mostly inside a better one (the same face seen at two scales)."""
    if len(detections) < 2:
        return detections
    boxes = [[d.box.x, d.box.y, d.box.w, d.box.h] for d in detections]
    scores = [d.score for d in detections]
    keep = [detections[i] for i in np.array(cv2.dnn.NMSBoxes(boxes, scores, 0.0, iou)).reshape(-1)]
    keep.sort(key=lambda d: d.score, reverse=True)
    out: list[Detection] = []
    for d in keep:
        if all(_overlap_of_smaller(d.box, k.box) < inside for k in out):
            out.append(d)
    return out


def _overlap_of_smaller(a: Box, b: Box) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy / max(1, min(a.w * a.h, b.w * b.h))
