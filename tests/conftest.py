"""Shared fixtures: real FER2013 faces from ../shared and small models trained on them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FER = Path(os.environ.get("FER2013_DIR", ROOT.parent / "shared" / "datasets" / "fer2013"))
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def copy_subset(dst: Path, per_class: int, splits=("train", "val"), labels=LABELS) -> Path:
    """The first ``per_class`` files of each class, in sorted order, copied to ``dst``."""
    if not FER.is_dir():
        pytest.skip(f"FER2013 not found at {FER}")
    for split in splits:
        for label in labels:
            target = dst / split / label
            target.mkdir(parents=True, exist_ok=True)
            for src in sorted((FER / split / label).iterdir())[:per_class]:
                shutil.copy(src, target / src.name)
    return dst


@pytest.fixture(scope="session")
def fer_root() -> Path:
    if not FER.is_dir():
        pytest.skip(f"FER2013 not found at {FER}")
    return FER


@pytest.fixture(scope="session")
def fer_small(tmp_path_factory) -> Path:
    """FER2013 with 30 train and 30 val images per class."""
    return copy_subset(tmp_path_factory.mktemp("fer_small"), 30)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fer_small) -> Path:
    """A complete run directory: a tiny MobileNetV2 trained for 2 epochs on ``fer_small``."""
    from training.config import FitConfig
    from training.fit import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = FitConfig(data=str(fer_small), out=str(out), alpha=0.35, input_size=48, epochs=2, batch_size=32,
                    warmup_epochs=0, seed=1)
    return fit(cfg)
