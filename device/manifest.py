"""The model manifest: the one contract between training/, convert/ and device/.

A manifest is a JSON file that travels with a model (``NAME.json`` beside
``NAME.tflite``, ``manifest.json`` in a training run).  It says what the
classifier expects (labels, input size, colour, normalisation, how faces are
cropped) and where the model came from.  This module is the only code that
reads or writes that format; it is pure Python so the device can use it
without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import ModelError

FORMAT = "emotion-classifier-manifest"
VERSION = 1
COLORS = ("grayscale", "rgb")
ACTIVATIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Quant:
    """Affine quantisation of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str  # "int8" or "uint8"


@dataclass(frozen=True)
class Crop:
    """How a face box from the detector becomes the classifier's input image.

    ``margin`` is added on each side as a fraction of the box size; ``square``
    grows the shorter side so the crop is square before resizing; ``shift_y``
    moves the crop's centre down by that fraction of the box height (negative:
    up), since datasets frame faces differently from the detector.
    """

    margin: float = 0.1
    square: bool = True
    shift_y: float = 0.0


@dataclass(frozen=True)
class Manifest:
    labels: tuple[str, ...]
    input_size: int
    color: str = "grayscale"
    # The model takes float pixels as ``pixel * scale + offset`` (pixel in 0..255).
    scale: float = 1.0
    offset: float = 0.0
    activation: str = "softmax"
    crop: Crop = field(default_factory=Crop)
    # Filled in by ``convert quantize``.
    mode: str | None = None
    model_sha256: str | None = None
    input_quant: Quant | None = None
    output_quant: Quant | None = None
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ModelError(f"manifest needs at least 2 labels, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ModelError(f"manifest labels are not unique: {list(self.labels)}")
        if self.color not in COLORS:
            raise ModelError(f"manifest color must be one of {COLORS}, got {self.color!r}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"manifest activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "sigmoid" and len(self.labels) != 2:
            raise ModelError("a sigmoid model must have exactly 2 labels")
        if not 8 <= self.input_size <= 1024:
            raise ModelError(f"manifest input_size {self.input_size} is out of range")

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3

    @property
    def output_units(self) -> int:
        return 1 if self.activation == "sigmoid" else len(self.labels)

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT:
            raise ModelError(f"not an emotion-classifier manifest (format={data.get('format')!r})")
        if data.get("version") != VERSION:
            raise ModelError(f"unsupported manifest version {data.get('version')!r}; this build reads {VERSION}")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ModelError(f"unknown manifest keys: {', '.join(unknown)}")
        try:
            body["labels"] = tuple(body["labels"])
            body["crop"] = Crop(**body.get("crop", {}))
            for key in ("input_quant", "output_quant"):
                if body.get(key) is not None:
                    body[key] = Quant(**body[key])
            return cls(**body)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"malformed manifest: {exc}") from None


def manifest_path_for(model_path: str | os.PathLike) -> Path:
    """``models/x.tflite`` -> ``models/x.json``."""
    return Path(model_path).with_suffix(".json")


def keras_manifest_path(model_path: str | os.PathLike) -> Path | None:
    """The manifest of a Keras model: ``NAME.json`` beside ``NAME.keras`` (models/) or a run's ``manifest.json``."""
    model_path = Path(model_path)
    for candidate in (model_path.with_suffix(".json"), model_path.parent / "manifest.json"):
        if candidate.is_file():
            return candidate
    return None


def load(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read manifest {path}: {exc}") from None
    return Manifest.from_dict(data)


def save(manifest: Manifest, path: str | os.PathLike) -> None:
    write_atomic(Path(path), (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide models and logs from the service user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
