"""``python -m convert evaluate``: a .tflite in LiteRT on a labelled folder, exactly as the device runs it.

Each image becomes a model-size image (``training.data.read_image``), then
goes through :func:`device.classifier.predict`: :func:`device.runtime.to_input`
and :func:`device.runtime.to_probs`, the same two functions as the device's classifier.  This module needs LiteRT,
OpenCV and scikit-learn but never TensorFlow: Keras is imported only for the
optional comparison with the source model (``--keras``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from device import manifest as mf
from device.classifier import open_checked, predict
from device.errors import ModelError
from training import report, votes as fer_votes
from training.data import Dataset, load_folder_for

log = logging.getLogger(__name__)

BATCH_SIZE = 64


def labelled_folder(data: str | Path) -> Path:
    """A split dataset's ``val/``, else the class-per-folder tree itself."""
    data = Path(data)
    return data / "val" if (data / "val").is_dir() else data


def load_labelled(data: str | Path, manifest: mf.Manifest, votes: fer_votes.Votes | None = None) -> Dataset:
    """Model-size images of a class-per-folder tree whose classes are the model's or some of them; with
    ``votes``, labelled by the FER+ majority (training/votes.py)."""
    dataset = load_folder_for(labelled_folder(data), manifest.input_size, manifest.color, manifest.labels)
    if votes is None:
        return dataset
    return fer_votes.attach(dataset, votes, str(labelled_folder(data)), manifest.labels)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of images where two models' top-1 classes agree."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def compare(data: Dataset, probs: np.ndarray, labels: tuple[str, ...], reference: np.ndarray | None = None
            ) -> dict[str, Any]:
    """training.report's metrics for the .tflite (with the votes' where ``data`` has them) and, given the Keras
    model's output, how far it moved."""
    y = data.y
    out = report.compute(y, probs, labels)
    if data.votes is not None:
        out.update(fer_votes.metrics(data, probs))
    if reference is not None:
        ref = report.compute(y, reference, labels)
        out["keras"] = {key: ref[key] for key in ("accuracy", "f1_macro", "per_class_accuracy")}
        out["accuracy_drop_pp"] = 100.0 * (ref["accuracy"] - out["accuracy"])
        out["agreement_with_keras"] = agreement(probs, reference)
        out["mean_abs_prob_diff"] = float(np.abs(probs - reference).mean())
    return out


def keras_probs(keras_path: str | Path, manifest: mf.Manifest, images: np.ndarray) -> np.ndarray:
    """The source Keras model's probabilities (imports Keras and TensorFlow)."""
    from convert.source import KerasModel, resolve, run_manifest

    path = resolve(keras_path)
    source = run_manifest(path)
    same = ("labels", "input_size", "color", "scale", "offset", "activation")
    differ = [key for key in same if getattr(source, key) != getattr(manifest, key)]
    if differ:
        raise ModelError(f"the .tflite was not converted from {path}: their manifests differ in {', '.join(differ)}")
    with KerasModel(path, source) as model:
        if manifest.source.get("keras_sha256") not in (None, model.sha256):
            log.warning("%s is not the file this .tflite was converted from (sha256 differs)", path)
        return model.predict(images)


def evaluate(model: str | Path, data: str | Path, keras_model: str | Path | None = None, threads: int = 1,
             batch_size: int = BATCH_SIZE, report_dir: str | Path | None = None,
             votes: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a .tflite on a labelled folder (DATA/val when there is one), optionally against Keras and
    against FER+ ``votes``; ``report_dir`` also gets metrics.json, report.md and the plots."""
    vote_table = fer_votes.read(votes) if votes else None
    runtime, manifest = open_checked(model, threads, "cpu")
    dataset = load_labelled(data, manifest, vote_table)
    started = time.perf_counter()
    probs = predict(runtime, manifest, dataset.x, batch_size)
    seconds = time.perf_counter() - started
    log.info("%s: %d images in %.1f s (%s)", model, len(dataset), seconds, runtime.description)
    reference = keras_probs(keras_model, manifest, dataset.x) if keras_model else None
    result = compare(dataset, probs, manifest.labels, reference)
    result.update(model=str(model), mode=manifest.mode, data=str(labelled_folder(data)),
                  skipped_unreadable=dataset.skipped, seconds=round(seconds, 3))
    if keras_model:
        result["keras_model"] = str(keras_model)
    if vote_table is not None:
        result["votes"] = vote_table.lineage()
    if report_dir is not None:
        report.write(result, Path(report_dir), dataset.y, probs, title=f"{Path(model).name} on {result['data']}")
    return result


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"{result['model']} ({result.get('mode') or 'mode unknown'}) on {result['data']}: n={result['n']}",
             report.summary_line(result),
             "per-class accuracy: " + "  ".join(f"{name} {'n/a' if acc is None else f'{acc:.3f}'}"
                                                 for name, acc in result["per_class_accuracy"].items())]
    if "keras" in result:
        lines.append(f"keras accuracy {result['keras']['accuracy']:.4f}  drop {result['accuracy_drop_pp']:.2f} pp"
                     f"  top-1 agreement {result['agreement_with_keras']:.4f}")
    return "\n".join(lines)
