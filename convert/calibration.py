"""The representative dataset for full-integer quantisation: a stratified sample of the training images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from device import manifest as mf
from training.data import DataError, list_class_folder, read_image

log = logging.getLogger(__name__)


def training_folder(data: str | Path) -> Path:
    """A split dataset's ``train/``, else the class-per-folder tree itself."""
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"calibration folder not found: {data} (a class-per-folder tree, or a dataset with train/)")
    return data / "train" if (data / "train").is_dir() else data


def stratified_pick(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` items with the classes in their proportions (a plain random pick when too few)."""
    index = np.arange(len(y))
    if n >= len(y):
        return index
    try:
        picked, _ = train_test_split(index, train_size=n, random_state=seed, stratify=y)
    except ValueError:  # fewer samples than classes, or a class with one image
        picked = np.random.default_rng(seed).choice(index, size=n, replace=False)
    return np.sort(picked)


def load(data: str | Path, manifest: mf.Manifest, samples: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, size, size, channels) calibration images from ``data``, whose classes must be the model's or
    some of them (a model trained on FER+ votes has 8 classes, FER2013's folders 7)."""
    if samples < 1:
        raise DataError(f"--samples must be at least 1, got {samples}")
    root = training_folder(data)
    labels, items = list_class_folder(root)
    if not set(labels) <= set(manifest.labels):
        raise DataError(f"the calibration classes in {root} {list(labels)} differ from the model's"
                        f" {list(manifest.labels)}: they must be its classes or some of them")
    y = np.array([index for _, index in items])
    picks = stratified_pick(y, samples, seed)
    images = [read_image(items[i][0], manifest.input_size, manifest.color) for i in picks]
    good = [image for image in images if image is not None]
    if len(good) < len(images):
        log.warning("calibration: skipped %d unreadable image(s)", len(images) - len(good))
    if not good:
        raise DataError(f"no readable calibration images in {root}")
    log.info("calibration: %d images from %s (stratified, seed %d)", len(good), root, seed)
    return np.stack(good)
