"""``python -m convert crop-study``: choose the face crop by measurement.

The classifier was trained on a dataset's own framing (FER2013: 48x48 crops
with forehead and chin); on the device it sees the detector's box grown by a
margin.  This study puts each labelled face into a camera-sized frame, runs
the real MediaPipe detector on it, crops with each candidate margin (and the
measured vertical shift between the detector's box and the dataset's framing),
and classifies with the real .tflite.  The best margin is the one whose
accuracy comes closest to classifying the dataset crops directly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np

from device.classifier import EmotionClassifier
from device.config import ClassifierConfig, DetectorConfig
from device.detector import FaceDetector
from device.frames import Box
from device.manifest import Crop, load, manifest_path_for, save
from device.preprocess import crop_face, to_model_image
from training import votes as fer_votes
from training.data import load_folder_for

log = logging.getLogger(__name__)

FACE_PX = 200  # short-range finds >= 97% of FER2013 crops upscaled to 200 px or more
FRAME = (480, 640)


def place(face: np.ndarray) -> tuple[np.ndarray, Box]:
    """A grey 640x480 BGR frame with the face upscaled to FACE_PX in its middle."""
    big = cv2.resize(face, (FACE_PX, FACE_PX), interpolation=cv2.INTER_LINEAR)
    frame = np.full((*FRAME, 3), 110, np.uint8)
    y, x = (FRAME[0] - FACE_PX) // 2, (FRAME[1] - FACE_PX) // 2
    frame[y:y + FACE_PX, x:x + FACE_PX] = big if big.ndim == 3 else big[..., None]
    return frame, Box(x, y, FACE_PX, FACE_PX)


def crop_study(model: str | Path, data: str | Path, margins: list[float], per_class: int = 100,
               detector: str = "short", models_dir: str = "models", seed: int = 0,
               votes: str | Path | None = None) -> dict:
    """Device-path accuracy (detector box -> crop -> classifier) per crop; with ``votes``, against the FER+
    majority (a model trained on the votes has their 8 classes; the folders have FER2013's 7)."""
    clf = EmotionClassifier(ClassifierConfig(model=str(model), accelerator="cpu"))
    m = clf.manifest
    root = Path(data)
    root = root / "val" if (root / "val").is_dir() else root
    # Faces at their native resolution; to_model_image later makes them model-sized.
    ds = load_folder_for(root, 48, m.color, m.labels, limit_per_class=per_class, seed=seed)
    if votes:
        ds = fer_votes.attach(ds, fer_votes.read(votes), str(root), m.labels)
    det = FaceDetector(DetectorConfig(model=detector, models_dir=models_dir))
    try:
        frames, boxes, found = [], [], []
        for image in ds.x:
            frame, placed = place(image if image.shape[-1] == 3 else image[..., 0])
            hits = det.detect(frame)
            if hits:
                best = max(hits, key=lambda d: d.box.iou(placed))
                frames.append(frame)
                boxes.append(best.box)
                found.append(True)
            else:
                found.append(False)
    finally:
        det.close()
    found = np.array(found)
    y = ds.y[found]
    direct = clf.classify_images(np.stack([to_model_image(im, m.input_size, m.color) for im in ds.x[found]]))
    direct_pred = direct.argmax(1)
    # Where does the dataset's framing sit relative to the detector's box?  (in box heights)
    placed_cy = (FRAME[0] - FACE_PX) / 2 + FACE_PX / 2
    shift = float(np.median([(placed_cy - (b.y + b.h / 2)) / b.h for b in boxes]))
    scale = float(np.median([FACE_PX / b.h for b in boxes]))
    rows = []
    for shift_y in (0.0, round(shift, 3)):
        for margin in margins:
            crop = Crop(margin=margin, square=True, shift_y=shift_y)
            images = np.stack([to_model_image(crop_face(f, b, crop), m.input_size, m.color, bgr=True)
                               for f, b in zip(frames, boxes)])
            pred = clf.classify_images(images).argmax(1)
            rows.append({"margin": margin, "shift_y": shift_y, "accuracy": float((pred == y).mean()),
                         "agreement_with_dataset_crop": float((pred == direct_pred).mean())})
    best = max(rows, key=lambda r: (r["accuracy"], r["agreement_with_dataset_crop"]))
    return {
        "model": str(model), "data": str(root), "images": int(len(ds)), "detected": int(found.sum()),
        "votes": str(votes) if votes else None,
        "detector": detector, "dataset_crop_accuracy": float((direct_pred == y).mean()),
        "median_dataset_crop_over_box": scale, "median_centre_shift_in_box_heights": shift,
        "rows": rows, "best": best,
    }


def format_study(result: dict) -> str:
    lines = [f"crop study: {result['detected']}/{result['images']} faces detected ({result['detector']}),"
             f" dataset-crop accuracy {result['dataset_crop_accuracy']:.4f}",
             f"dataset crop = {result['median_dataset_crop_over_box']:.2f} x detector box (median), centre "
             f"{result['median_centre_shift_in_box_heights']:+.3f} box heights from the box's",
             f"{'margin':>7} {'shift_y':>8} {'accuracy':>9} {'agreement':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['margin']:>7.2f} {r['shift_y']:>8.3f} {r['accuracy']:>9.4f} "
                     f"{r['agreement_with_dataset_crop']:>10.4f}")
    b = result["best"]
    lines.append(f"best: --crop-margin {b['margin']} (shift_y {b['shift_y']})")
    return "\n".join(lines)


def apply(model: str | Path, result: dict) -> Crop:
    """Record the best crop, and the study, in the model's manifest (the crop is not part of the sha256)."""
    path = manifest_path_for(model)
    manifest = load(path)
    crop = dataclasses.replace(manifest.crop, margin=result["best"]["margin"], shift_y=result["best"]["shift_y"])
    study = {k: v for k, v in result.items() if k != "model"}
    save(manifest.replace(crop=crop, verification={**manifest.verification, "crop_study": study}), path)
    return crop
