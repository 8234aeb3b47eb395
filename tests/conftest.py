"""Shared fixtures: real FER2013 faces from ../shared and small models trained on them."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FER = Path(os.environ.get("FER2013_DIR", ROOT.parent / "shared" / "datasets" / "fer2013"))
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@functools.cache
def index_unreachable() -> str | None:
    """Why pip cannot get packages here, as it is configured (index, mirrors, find-links); None when it can.
    The probe is what building the wheel asks for first: setuptools (about 1 MB, a second or two)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "0", "--timeout",
                                "10", "-q", "-d", folder, "setuptools>=77"], capture_output=True, text=True,
                               timeout=120)
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return f"the package index is unreachable (pip download setuptools: {last}); these tests pip-install a wheel"


def pytest_collection_modifyitems(config, items) -> None:
    """``network`` tests are skipped, with the reason, when the package index cannot be reached."""
    needs = [item for item in items if item.get_closest_marker("network")]
    reason = index_unreachable() if needs else None
    for item in needs if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter) -> None:
    """At the end, what was not run and why (a missing browser, broker or dataset), however -r is set."""
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
            reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("not run, and why")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:4d} skipped: {reason}")


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
def face_models() -> Path:
    """The provisioned MediaPipe face-detection models (``python -m device models``)."""
    from device.facemodels import FACE_MODELS

    folder = ROOT / "models"
    if not all((folder / name).is_file() for name in FACE_MODELS):
        pytest.skip("face models missing: python -m device models")
    return folder


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


# A classifier for device tests: an untrained tiny MobileNetV2, converted to int8 in a subprocess
# so that TensorFlow (1 GB, slow to import) stays out of the test process.
TINY_TFLITE = r'''
import sys
import numpy as np, keras, tensorflow as tf
from device import manifest as mf
from training.model import build
out, labels = sys.argv[1], sys.argv[2].split(",")
keras.utils.set_random_seed(0)
model = build("mobilenetv2", len(labels), 48, 1, alpha=0.35)
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
rng = np.random.default_rng(0)
conv.representative_dataset = lambda: ([rng.integers(0, 256, (1, 48, 48, 1)).astype("float32")] for _ in range(20))
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
open(out, "wb").write(conv.convert())
manifest = mf.Manifest(labels=tuple(labels), input_size=48, color="grayscale", scale=1.0, offset=0.0,
                       mode="int8", model_sha256=mf.sha256_file(out))
mf.save(manifest, mf.manifest_path_for(out))
'''


@pytest.fixture(scope="session")
def tflite_model(tmp_path_factory) -> Path:
    """An int8 48x48 grayscale 7-class .tflite (untrained weights) with its manifest beside it."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("tflite") / "emotion_tiny.tflite"
    result = subprocess.run([sys.executable, "-c", TINY_TFLITE, str(out), ",".join(LABELS)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the test model failed:\n{result.stderr[-3000:]}")
    return out
