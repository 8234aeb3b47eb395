"""Where the device finds its files, the same from a checkout and from an installed wheel.

- The shipped emotion models and their manifests: the wheel ships them as package data
  (``device/models/``, mapped from the repository's ``models/`` in pyproject.toml); a checkout
  uses ``models/`` itself.  ``ferplus`` (the default: what ten annotators see, 8 expressions)
  and ``fer2013`` (FER2013's single labels, 7 expressions) name them for ``--model``.
- The face-detection models (not ours to ship): one folder per installation.  In order:
  ``--face-models DIR``, ``$EMOTION_DEVICE_FACE_MODELS``, a checkout's ``models/``, then
  ``<venv>/share/emotion-device/models`` inside a virtual environment, else
  ``$XDG_DATA_HOME/emotion-device/models`` (``~/.local/share/...``).  ``models`` writes where
  ``run`` reads.
- The systemd templates (unit, config, Jetson drop-in): package data ``device/systemd/`` in a
  wheel, ``systemd/`` in a checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
SHIPPED_MODELS = {"ferplus": "emotion_ferplus.tflite", "fer2013": "emotion_fer2013.tflite"}
MODEL_NAME = SHIPPED_MODELS["ferplus"]
FACE_MODELS_ENV = "EMOTION_DEVICE_FACE_MODELS"
AUTO = "auto"


def is_checkout() -> bool:
    """Running from the source tree (plain or editable install), not from an installed wheel."""
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "device").resolve() == PACKAGE


def _bundled(folder: str, checkout_folder: str) -> Path:
    inside = PACKAGE / folder
    return inside if inside.is_dir() or not is_checkout() else CHECKOUT / checkout_folder


def bundled_models() -> Path:
    """The folder holding the default emotion model and its manifest."""
    return _bundled("models", "models")


def default_model() -> Path:
    return bundled_models() / MODEL_NAME


def model_path(setting: str | os.PathLike) -> Path:
    """``--model``: a shipped model's name (``ferplus``, ``fer2013``) or a path to a .tflite."""
    name = SHIPPED_MODELS.get(str(setting))
    return bundled_models() / name if name else Path(setting)


def templates() -> Path:
    """The folder holding the systemd unit, the config template and the Jetson drop-in."""
    return _bundled("systemd", "systemd")


def installation_data() -> Path:
    """This installation's data folder: inside the venv, else the user's XDG data folder."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "share" / "emotion-device"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "emotion-device"


def face_models_dir(setting: str | os.PathLike = AUTO) -> Path:
    """The face-model folder for a ``--face-models`` setting (``auto``: see the module's docstring)."""
    if str(setting) != AUTO:
        return Path(setting)
    if os.environ.get(FACE_MODELS_ENV):
        return Path(os.environ[FACE_MODELS_ENV])
    if is_checkout():
        return CHECKOUT / "models"
    return installation_data() / "models"
