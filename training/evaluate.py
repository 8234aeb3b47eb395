"""``python -m training evaluate`` and ``predict``: run a trained Keras model over labelled or unlabelled images."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from device import manifest as mf
from training import report, votes as fer_votes
from training.data import IMAGE_SUFFIXES, DataError, Dataset, load_folder_for, load_splits, read_image

log = logging.getLogger(__name__)


def model_file(run: str | Path) -> Path:
    """A run directory's model.keras, or the .keras file given."""
    run = Path(run)
    return run / "model.keras" if run.is_dir() else run


def load_run(run: str | Path) -> tuple[keras.Model, mf.Manifest]:
    """A run directory (or a model.keras inside one) -> (model, manifest)."""
    model_path = model_file(run)
    if not model_path.exists():
        hint = " (the run is not finished yet)" if model_path.parent.name.endswith(".incomplete") else ""
        raise DataError(f"no model at {model_path}{hint}")
    manifest_path = mf.keras_manifest_path(model_path)  # a run's manifest.json, or NAME.json beside NAME.keras
    manifest = mf.load(manifest_path or model_path.parent / "manifest.json")
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a file that is not a model
        raise DataError(f"{model_path} is not a Keras model: {exc}") from None
    return model, manifest


def predict_probs(model: keras.Model, x: np.ndarray, activation: str, tta: bool = False,
                  batch_size: int = 256) -> np.ndarray:
    """(N, classes) probabilities; ``tta`` averages with the horizontally flipped image."""
    x = x.astype("float32")
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    if tta:
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)) / 2
    probs = np.asarray(probs, dtype="float64")
    if activation == "sigmoid":
        probs = np.concatenate([1 - probs, probs], axis=1)
    return probs


def check_compatible(model: keras.Model, manifest: mf.Manifest, labels: tuple[str, ...]) -> None:
    if tuple(labels) != manifest.labels:
        raise DataError(f"the data's classes {list(labels)} differ from the model's {list(manifest.labels)}")
    expected = (manifest.input_size, manifest.input_size, manifest.channels)
    if tuple(model.input_shape[1:]) != expected:
        raise DataError(f"model input {model.input_shape[1:]} does not match the manifest's {expected}")


def evaluate_model(model: keras.Model, data: Dataset, manifest: mf.Manifest, tta: bool = False) -> dict[str, Any]:
    check_compatible(model, manifest, data.labels)
    probs = predict_probs(model, data.x, manifest.activation, tta)
    out = report.compute(data.y, probs, manifest.labels)
    if data.votes is not None:
        out.update(fer_votes.metrics(data, probs))
    out["tta"] = tta
    out["_probs"] = probs  # popped by write_report
    out["_y"] = data.y
    return out


def write_report(result: dict[str, Any], out_dir: Path, history_csv: Path | None = None) -> None:
    probs, y = result.pop("_probs"), result.pop("_y")
    report.write(result, out_dir, y, probs, history_csv=history_csv)


def evaluate_cli(run: str, data: str, out: str | None, tta: bool, votes: str | None = None) -> dict[str, Any]:
    vote_table = fer_votes.read(votes) if votes else None
    model, manifest = load_run(run)
    path = Path(data)
    if path.is_dir() and not (path / "train").is_dir() and not (path / "val").is_dir():
        dataset = load_folder_for(path, manifest.input_size, manifest.color, manifest.labels)
    elif (path / "val").is_dir():  # a split dataset: evaluate on its val/ (the project's selection split)
        dataset = load_folder_for(path / "val", manifest.input_size, manifest.color, manifest.labels)
    else:
        dataset = load_splits(path, manifest.input_size, manifest.color).val
    if vote_table is not None:
        dataset = fer_votes.attach(dataset, vote_table, str(path), manifest.labels)
    result = evaluate_model(model, dataset, manifest, tta)
    if dataset.skipped:
        result["skipped_unreadable"] = dataset.skipped
    out_dir = Path(out) if out else (Path(run) if Path(run).is_dir() else Path(run).parent) / "eval"
    write_report(result, out_dir)
    log.info("wrote %s", out_dir)
    return result


def predict_cli(run: str, folder: str, out: str, tta: bool) -> int:
    """CSV ``filename,label,<p_class>...`` for an unlabelled folder; returns the row count."""
    model, manifest = load_run(run)
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images in {root}")
    images = [(f, read_image(f, manifest.input_size, manifest.color)) for f in files]
    good = [(f, im) for f, im in images if im is not None]
    if len(good) < len(files):
        log.warning("skipped %d unreadable image(s)", len(files) - len(good))
    if not good:
        raise DataError(f"no readable images in {root}")
    probs = predict_probs(model, np.stack([im for _, im in good]), manifest.activation, tta)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["filename", "label", *[f"p_{name}" for name in manifest.labels]])
    for (f, _), p in zip(good, probs):
        # The label is the class index in alphabetical order, as in the seeds' Kaggle submissions.
        writer.writerow([f.relative_to(root).as_posix(), int(p.argmax()), *[f"{v:.6f}" for v in p]])
    mf.write_atomic(Path(out), buffer.getvalue().encode())
    return len(good)
