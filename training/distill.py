"""Distillation targets: the mean probabilities of teacher models on the training images, computed once.

A teacher is a Keras model (a run directory, or NAME.keras with NAME.json), a
.tflite with its manifest, so an int8 model whose float parent was not kept
(run 1 in the model card) can still teach, or an .npz of a model's
probabilities keyed by file (``keys``, ``labels``, ``probs``), so a teacher
trained elsewhere (scripts/ferplus_teacher.py, on a GPU machine) teaches
without running here.  Each teacher sees the images the way it was
evaluated: Keras with the horizontal flip averaged in, the .tflite as it is
(its export already folds the flip in), and at its own input size, so a 64 px
model can teach an 80 px student.  The targets are cached in the run
directory, so a resumed run does not recompute them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path, PurePosixPath

import numpy as np

from device import manifest as mf
from training.data import DataError, Dataset, read_image

log = logging.getLogger(__name__)


def teacher_probs(path: str | Path, data: Dataset) -> np.ndarray:
    """(N, classes) probabilities of one teacher on ``data``; its classes must be the data's, in order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"teacher {path} does not exist")
    if path.suffix == ".npz":
        probs = saved_probs(path, data)
    elif path.suffix == ".tflite":
        from device.classifier import open_checked, predict
        from device.errors import ModelError

        try:
            runtime, manifest = open_checked(path, 2, "cpu")
        except ModelError as exc:
            raise DataError(f"teacher {path}: {exc}") from None
        probs = predict(runtime, manifest, images_for(path, manifest, data))
    else:
        from training.evaluate import load_run, predict_probs

        model, manifest = load_run(path)
        probs = predict_probs(model, images_for(path, manifest, data), manifest.activation, tta=True)
    probs = np.asarray(probs, dtype="float32")
    log.info("teacher %s: train accuracy %.4f", path, float(np.mean(probs.argmax(1) == data.y)))
    return probs


def saved_probs(path: Path, data: Dataset) -> np.ndarray:
    """A teacher's probabilities saved by file: each training image matched by its last path components."""
    try:
        with np.load(path) as saved:
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in saved["keys"]]
            labels, probs = tuple(str(n) for n in saved["labels"]), saved["probs"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"teacher {path}: not an .npz of keys, labels and probs ({exc})") from None
    if labels != tuple(data.labels):
        raise DataError(f"teacher {path} has classes {list(labels)}, the data {list(data.labels)}")
    if probs.shape != (len(keys), len(labels)):
        raise DataError(f"teacher {path}: probs has shape {probs.shape}, expected ({len(keys)}, {len(labels)})")
    depth = len(PurePosixPath(keys[0]).parts)
    index = {key: i for i, key in enumerate(keys)}
    rows = [index.get("/".join(Path(f).parts[-depth:])) for f in data.files]
    missing = [f for f, row in zip(data.files, rows) if row is None]
    if missing:
        raise DataError(f"teacher {path} has no probabilities for {len(missing)} of the {len(data)} training images"
                        f" (e.g. {missing[0]})")
    return probs[rows]


def images_for(path: Path, manifest: mf.Manifest, data: Dataset) -> np.ndarray:
    """The training images as the teacher takes them: re-read from their files at its size and colour if need be."""
    if tuple(manifest.labels) != tuple(data.labels):
        raise DataError(f"teacher {path} has classes {list(manifest.labels)}, the data {list(data.labels)}")
    if (manifest.input_size, manifest.channels) == (data.x.shape[1], data.x.shape[-1]):
        return data.x
    if len(data.files) != len(data):  # a FER2013 .csv has no files
        raise DataError(f"teacher {path} takes {manifest.input_size} px with {manifest.channels} channel(s); "
                        f"the data is {data.x.shape[1]} px with {data.x.shape[-1]} and has no image files to re-read")
    log.info("teacher %s: re-reading %d images at %d px", path, len(data), manifest.input_size)
    images = [read_image(f, manifest.input_size, manifest.color) for f in data.files]
    unread = [f for f, image in zip(data.files, images) if image is None]
    if unread:
        raise DataError(f"teacher {path}: {len(unread)} training images could not be re-read (e.g. {unread[0]})")
    return np.stack(images)


def fingerprint(data: Dataset) -> str:
    """Identifies the training images and their order, so cached targets are never applied to other data."""
    digest = hashlib.sha256(data.y.astype("int32").tobytes())
    digest.update(np.ascontiguousarray(data.x[:, ::8, ::8]).tobytes())
    return digest.hexdigest()


def soft_targets(teachers: list[str], data: Dataset, cache: Path) -> np.ndarray:
    """The teachers' mean probabilities on ``data`` (cached in ``cache``, an .npz)."""
    key = fingerprint(data) + "|" + "|".join(teachers)
    if cache.exists():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                return saved["probs"]
    probs = np.mean([teacher_probs(t, data) for t in teachers], axis=0).astype("float32")
    log.info("teacher ensemble: train accuracy %.4f", float(np.mean(probs.argmax(1) == data.y)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, probs=probs, key=np.array(key))
    tmp.replace(cache)
    return probs


def blend(one_hot: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """Training targets: ``weight`` of the teachers' probabilities, the rest the true label."""
    return ((1.0 - weight) * one_hot + weight * teacher).astype("float32")
