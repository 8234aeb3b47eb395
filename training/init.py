"""``fit --init MODEL``: start from a saved Keras classifier instead of random weights.

The same classes (by the manifest's labels) give a warm restart: every weight
is kept and training goes on with a fresh schedule.  Other classes (a team's own
nine expressions, a binary task) keep the backbone and get a new head.  This is
the offline alternative to ImageNet weights, which Keras would download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from device import manifest as mf
from device.errors import ModelError
from training import model as models
from training.data import DataError

log = logging.getLogger(__name__)

COLORS = {1: "grayscale", 3: "rgb"}


@dataclass
class InitModel:
    path: Path
    model: keras.Model
    sha256: str
    input_size: int
    color: str
    labels: tuple[str, ...] | None  # None when no manifest is found beside the model
    source: dict[str, Any] = field(default_factory=dict)  # the manifest's lineage, if any
    verification: dict[str, Any] = field(default_factory=dict)
    resized_from: int | None = None  # the saved model's input size when fit_input changed it

    def classifier(self, labels: tuple[str, ...], dropout: float, activation: str, name: str) -> keras.Model:
        """The model to train: all of it for the same classes, else its backbone under a new head."""
        units = self.model.output_shape[-1]
        same = self.labels == tuple(labels) if self.labels is not None else units == len(labels)
        if same and activation == "softmax":
            if self.labels is None:
                log.warning("--init %s: no manifest beside it, so its %d classes are assumed to be the data's",
                            self.path, units)
            return keras.Model(self.model.inputs, self.model.outputs, name=name)
        try:
            features = self.model.get_layer("head_dropout").input
        except ValueError:
            raise DataError(f"--init {self.path}: no 'head_dropout' layer, so its backbone cannot be reused for "
                            "other classes (use a model written by training fit)") from None
        log.info("--init %s: keeping the backbone, new head for %d classes %s", self.path, len(labels), list(labels))
        return keras.Model(self.model.inputs, models.head(features, len(labels), dropout, activation), name=name)

    def lineage(self, labels: tuple[str, ...]) -> dict[str, Any]:
        """What the run manifest records about its parent."""
        mode = "warm restart" if self.labels == tuple(labels) else "new head"
        parent = {"model": str(self.path), "sha256": self.sha256, "mode": mode,
                  "float_val_accuracy": self.source.get("float_val_accuracy"),
                  "int8_val_accuracy": self.verification.get("accuracy"), "input_size": self.resized_from}
        return {k: v for k, v in parent.items() if v is not None}


def load(path: str | Path) -> InitModel:
    """A Keras classifier and what its manifest says; a DataError for anything that can't be used."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise DataError(f"--init {path}: no such file")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile errors... for a file that is not a model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"--init {path}: not a Keras model ({reason[:200]})") from None
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] not in COLORS:
        raise DataError(f"--init {path}: input shape {shape[1:]} is not a square grayscale or RGB image")
    labels, source, verification = None, {}, {}
    manifest_path = mf.keras_manifest_path(path)
    if manifest_path is not None:
        try:
            manifest = mf.load(manifest_path)
        except ModelError as exc:
            raise DataError(f"--init {path}: {exc}") from None
        labels, source, verification = manifest.labels, dict(manifest.source), dict(manifest.verification or {})
    return InitModel(path=path, model=model, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                     input_size=int(shape[1]), color=COLORS[shape[3]], labels=labels, source=source,
                     verification=verification)


def fit_input(init: InitModel, input_size: int, color: str) -> InitModel:
    """The --init model at the data's input size: a convolutional backbone under global pooling has the same
    weights at any size, so a larger input (more of each 48-px face's detail kept) is a warm restart too."""
    if init.color != color:
        raise DataError(f"--init {init.path} takes {init.color} images, but the data is loaded as "
                        f"{input_size}x{input_size} {color}; drop --color to take the model's")
    if init.input_size == input_size:
        return init
    config = init.model.get_config()
    _set_input_size(config, init.input_size, input_size)
    try:
        model = keras.Model.from_config(config)
        model.set_weights(init.model.get_weights())
    except Exception as exc:  # a layer with a fixed spatial size (Flatten, Reshape) cannot take another input
        raise DataError(f"--init {init.path} takes {init.input_size}x{init.input_size} images and cannot be "
                        f"rebuilt at {input_size}x{input_size} ({type(exc).__name__}); drop --input-size "
                        "to take the model's") from None
    log.info("--init %s: rebuilt from %d to %d px with every weight kept", init.path, init.input_size, input_size)
    return dataclasses.replace(init, model=model, input_size=input_size, resized_from=init.input_size)


def _set_input_size(config: Any, old: int, new: int) -> None:
    """Every square input of the saved layer graph (the model's and its nested backbone's) becomes new x new."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "batch_shape" and isinstance(value, (list, tuple)) and len(value) == 4 and value[1] == value[2] == old:
                config[key] = [value[0], new, new, value[3]]
            else:
                _set_input_size(value, old, new)
    elif isinstance(config, list):
        for value in config:
            _set_input_size(value, old, new)
