"""The emotion classifier: a .tflite in LiteRT, described by the manifest beside it.

The manifest must carry the file's sha256 and match the file (sha256, input
shape, number of labels); otherwise loading fails with one clear error.  The
bytes that are checked are the bytes that are loaded.  All faces of a frame go
through the model in one batch where the model allows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from device import locations, manifest as mf
from device.config import ClassifierConfig
from device.errors import ModelError
from device.frames import Box
from device.preprocess import crop_face, to_model_image
from device.runtime import Runtime, open_runtime, read_model, to_input, to_probs

log = logging.getLogger(__name__)

TFLITE_ID = b"TFL3"  # the FlatBuffer file identifier of every .tflite, at bytes 4 to 8


def load_manifest(model: Path) -> mf.Manifest:
    path = mf.manifest_path_for(model)
    if not model.is_file():
        raise ModelError(f"emotion model not found: {model}; train and convert one (python -m convert quantize)"
                         f" or use the shipped default")
    try:
        with open(model, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"cannot read model {model}: {exc.strerror or exc}") from None
    if head[4:8] != TFLITE_ID:  # before the manifest: README.md is not a model whose README.json is missing
        raise ModelError(f"{model} is not a TFLite model: --model takes a .tflite file (with its NAME.json manifest"
                         f" beside it)")
    if not path.is_file():
        raise ModelError(f"manifest not found beside the model: {path} (python -m convert quantize writes it)")
    return mf.load(path)


def check_model(runtime: Runtime, manifest: mf.Manifest, path: Path) -> None:
    """The model's tensors must be what its manifest says."""
    expected = (manifest.input_size, manifest.input_size, manifest.channels)
    if tuple(runtime.input.shape[1:]) != expected:
        raise ModelError(f"{path} takes input {runtime.input.shape[1:]} but its manifest says {expected}")
    units = int(np.prod(runtime.output.shape[1:]))
    if units != manifest.output_units:
        raise ModelError(f"{path} has {units} outputs but its manifest lists {len(manifest.labels)} labels")


def open_checked(model: str | Path, threads: int = 1, accelerator: str = "auto") -> tuple[Runtime, mf.Manifest]:
    """A .tflite and its manifest, checked against each other (sha256, input shape, labels)."""
    model = locations.model_path(model)
    manifest = load_manifest(model)
    if not manifest.model_sha256:
        raise ModelError(f"{mf.manifest_path_for(model)} has no model_sha256: convert the model again"
                         f" (python -m convert quantize writes it)")
    data = read_model(model)
    if hashlib.sha256(data).hexdigest() != manifest.model_sha256:
        raise ModelError(f"{model} does not match its manifest (sha256 differs): copy the .tflite and"
                         f" its .json together")
    runtime = open_runtime(data, threads, accelerator, name=str(model))
    log.info("emotion model %s: sha256 %s, %d labels, %d px", model, manifest.model_sha256[:12],
             len(manifest.labels), manifest.input_size)
    check_model(runtime, manifest, model)
    return runtime, manifest


def predict(runtime: Runtime, manifest: mf.Manifest, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 model-size images -> (N, classes) probabilities, in batches through the runtime (convert's
    evaluation, and a .tflite teacher in training/distill.py)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], manifest, runtime.input)
        chunks.append(to_probs(runtime.run(x), manifest, runtime.output))
    return np.concatenate(chunks)


class EmotionClassifier:
    def __init__(self, cfg: ClassifierConfig):
        self.runtime, self.manifest = open_checked(cfg.model, cfg.threads, cfg.accelerator)
        m = self.manifest
        self.crop = m.crop if cfg.crop_margin is None else dataclasses.replace(m.crop, margin=cfg.crop_margin)
        self.labels = m.labels
        self._batched = self._probe_batching()

    def _probe_batching(self) -> bool:
        """Some delegates take only batch 1; find out once, at load."""
        zeros = np.zeros((2, self.manifest.input_size, self.manifest.input_size, self.manifest.channels), np.uint8)
        try:
            self.runtime.run(to_input(zeros, self.manifest, self.runtime.input))
            return True
        except (RuntimeError, ValueError) as exc:
            log.info("classifier runs one face at a time (%s)", exc)
            return False

    def faces_to_input(self, frame_bgr: np.ndarray, boxes: list[Box]) -> np.ndarray:
        """uint8 (N, size, size, channels): each face cropped and framed as in the training data."""
        m = self.manifest
        return np.stack([to_model_image(crop_face(frame_bgr, box, self.crop), m.input_size, m.color, bgr=True)
                         for box in boxes])

    def classify_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 model-size images -> (N, classes) probabilities."""
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        x = to_input(images, self.manifest, self.runtime.input)
        if self._batched or len(x) == 1:
            raw = self.runtime.run(x)
        else:
            raw = np.concatenate([self.runtime.run(x[i:i + 1]) for i in range(len(x))])
        return to_probs(raw, self.manifest, self.runtime.output)

    def classify(self, frame_bgr: np.ndarray, boxes: list[Box]) -> np.ndarray:
        if not boxes:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.classify_images(self.faces_to_input(frame_bgr, boxes))
