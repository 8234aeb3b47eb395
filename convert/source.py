"""The Keras side of a conversion: a run's ``model.keras`` and the ``manifest.json`` beside it.

The cheap checks (the file, the manifest) come first.  Keras, and with it
TensorFlow, is imported only when the model is loaded, so a bad input fails
in a second rather than after TensorFlow's import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from device import manifest as mf
from device.errors import ModelError
from device.runtime import TensorSpec, to_input, to_probs

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
RUN_MANIFEST = "manifest.json"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def resolve(path: str | Path) -> Path:
    """A run directory or its model.keras -> the model file, checked to exist and to look like a model."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"Keras model not found: {path}")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a Keras model (a .keras file is a zip archive)")
    return path


def run_manifest(model_path: Path) -> mf.Manifest:
    """The training run's manifest beside the model: labels, input size, colour, normalisation, crop."""
    path = mf.keras_manifest_path(model_path)
    if path is None:
        raise ModelError(f"no {RUN_MANIFEST} (or {model_path.stem}.json) beside {model_path}; the conversion takes"
                         " the labels, input size and normalisation from the training run's manifest")
    return mf.load(path)


def float_spec(manifest: mf.Manifest) -> TensorSpec:
    """The Keras model's input: float32 pixels after the manifest's scale and offset."""
    return TensorSpec((-1, manifest.input_size, manifest.input_size, manifest.channels), np.dtype(np.float32),
                      0.0, 0)


def _keras():
    import keras
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ModelError(f"converting needs Keras on the TensorFlow backend (KERAS_BACKEND=tensorflow); this process"
                         f" runs {backend}")
    return keras


def with_tta(keras, model, flip: bool, zooms: tuple[float, ...] = ()):
    """Fold test-time augmentation into the model: the mean output over the image, its centre crops (each
    ``zoom`` of the side, resized back) and, with ``flip``, the mirrors of all of them. One pass per view."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    size = model.input_shape[1]
    views = [inputs]
    for zoom in zooms:
        side = int(round(size * zoom))
        top = (size - side) // 2
        # Plain slicing and resize ops: Keras's CenterCrop and Resizing layers bring random ops the converter
        # cannot keep as builtins.
        views.append(keras.layers.Lambda(
            lambda t, a=top, b=top + side: keras.ops.image.resize(t[:, a:b, a:b, :], (size, size)),
            name=f"zoom_{side}")(inputs))
    if flip:
        views += [keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name=f"mirror_{i}")(v)
                  for i, v in enumerate(views)]

    def single(x):
        y = model(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    if len(views) == 1:
        return model
    outputs = keras.layers.Average(name="tta")([single(v) for v in views])
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


class KerasModel:
    """A loaded Keras classifier, and its TensorFlow SavedModel export (made once, for the converter).

    Models saved under the JAX or torch backends load as well: a ``.keras``
    file is backend-independent, and it is loaded without its optimizer.
    """

    def __init__(self, path: str | Path, manifest: mf.Manifest | None = None, flip_tta: bool = False,
                 zoom_tta: tuple[float, ...] = ()):
        self.path = resolve(path)
        self.manifest = manifest or run_manifest(self.path)
        self.sha256 = mf.sha256_file(self.path)
        keras = _keras()
        try:
            self.model = keras.models.load_model(self.path, compile=False)
        except Exception as exc:  # Keras raises many types for a file it cannot load
            raise ModelError(f"cannot load {self.path} as a Keras model: {first_line(exc)}") from None
        self._check_shapes()
        self.model = with_tta(keras, self.model, flip_tta, zoom_tta)
        self._export: tempfile.TemporaryDirectory | None = None

    def _check_shapes(self) -> None:
        m = self.manifest
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise ModelError(f"{self.path} must have one input and one output")
        expected = (m.input_size, m.input_size, m.channels)
        if tuple(self.model.input_shape[1:]) != expected:
            raise ModelError(f"{self.path} takes input {tuple(self.model.input_shape[1:])} but its manifest says"
                             f" {expected}")
        units = self.model.output_shape[-1]
        if units != m.output_units:
            raise ModelError(f"{self.path} has {units} outputs but its manifest lists {len(m.labels)} labels"
                             f" ({m.activation})")

    def saved_model(self) -> Path:
        """The model as a TensorFlow SavedModel in a temporary folder (removed by :meth:`close`)."""
        if self._export is None:
            export = tempfile.TemporaryDirectory(prefix="convert-savedmodel-")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signatures
                    self.model.export(export.name, format="tf_saved_model", verbose=False)
            except Exception as exc:  # TensorFlow's tracing raises many types
                export.cleanup()
                raise ModelError(f"cannot export {self.path} for the TFLite converter: {first_line(exc)}") from None
            self._export = export
        return Path(self._export.name)

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 model-size images -> (N, classes) probabilities, normalised exactly as for the .tflite."""
        spec = float_spec(self.manifest)
        raw = self.model.predict(to_input(images, self.manifest, spec), batch_size=batch_size, verbose=0)
        return to_probs(np.asarray(raw), self.manifest, spec)

    def close(self) -> None:
        if self._export is not None:
            self._export.cleanup()
            self._export = None

    def __enter__(self) -> "KerasModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
