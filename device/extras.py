"""Optional dependencies: the install extra that brings a module, and the one line that says so.

A ``[device]``-only install (a Pi) has no scikit-learn, TensorFlow or Keras; the training and conversion tools
turn the ModuleNotFoundError of a missing one into ``error: ... install edge-emotion[train]`` and exit 78.
"""

from __future__ import annotations

EXIT_CODE = 78  # EX_CONFIG, as for a missing mediapipe (device.detector)

# import name -> (distribution, extra)
PACKAGES = {
    "sklearn": ("scikit-learn", "train"), "tensorflow": ("tensorflow", "train"), "keras": ("keras", "train"),
    "keras_tuner": ("keras-tuner", "train"), "tensorboard": ("tensorboard", "train"),
    "matplotlib": ("matplotlib", "train"), "cv2": ("opencv-contrib-python", "train"),
    "mediapipe": ("mediapipe", "device"), "ai_edge_litert": ("ai-edge-litert", "device"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """``error: ...`` naming the missing package and the extra to install; None when the module is not one of
    the optional dependencies (a bug to report, not an install to complete)."""
    known = PACKAGES.get((exc.name or "").partition(".")[0])
    if known is None:
        return None
    package, extra = known
    return (f"error: {package} is not installed (no module named {exc.name!r}): install edge-emotion[{extra}], "
            f"e.g. pip install 'edge-emotion[{extra}]'")
