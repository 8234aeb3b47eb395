"""``python -m training average``: one model from the mean of several models' weights (a "model soup", or SWA).

The epoch snapshots of one run lie in one basin of the loss, so the mean of
their weights is itself a good model, often better than each, at the cost of
one model.  Models further apart may not be (a warm restart averaged with its
parent scored below the restart alone: models/MODEL.md), so measure.

Averaged BatchNorm statistics do not belong to the averaged weights, so they
are measured again: the model runs over the training images in training mode,
and each BatchNorm layer keeps the exact mean over all batches of its batch
mean and variance (PyTorch's ``update_bn`` does the same).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np

from device import manifest as mf
from training import evaluate, votes as fer_votes
from training.data import DataError, load_splits

log = logging.getLogger(__name__)


def mean_weights(lists: list[list[np.ndarray]], shares: list[float] | None = None) -> list[np.ndarray]:
    """The weighted mean of several models' weight lists (one architecture: same shapes, same order)."""
    share = np.asarray(shares if shares is not None else [1.0] * len(lists), dtype="float64")
    share = share / share.sum()
    return [sum(s * ws[i].astype("float64") for s, ws in zip(share, lists)).astype(lists[0][i].dtype)
            for i in range(len(lists[0]))]


def swa(model: keras.Model, snapshots: list[Path], x: np.ndarray) -> keras.Model:
    """``model`` with the mean of the weight files ``snapshots`` (its own epochs), BatchNorm measured on ``x``."""
    lists = []
    for path in snapshots:
        model.load_weights(path)
        lists.append(model.get_weights())
    model.set_weights(mean_weights(lists))
    recompute_batchnorm(model, x)
    return model


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> None:
    """Each BatchNorm layer's moving statistics: the image-weighted mean of its batch statistics over ``x``."""
    layers = batchnorm_layers(model)
    if not layers:
        return
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.trainable = True  # Keras updates the moving statistics only of trainable layers
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].astype("float32")
            for layer in layers:  # new = old * seen/(seen+n) + batch * n/(seen+n): the running mean
                layer.momentum = seen / (seen + len(batch))
            model([batch], training=True)
            seen += len(batch)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable


def average(paths: list[str], data: str, out: str, weights: list[float] | None = None,
            votes: str | None = None) -> Path:
    """Average the models at ``paths``, measure BatchNorm on ``data``'s training images, write a run at ``out``.

    With ``votes`` (a FER+ votes CSV) the data is read as ``training fit --votes`` reads it: the 8 expressions
    as classes, val scored against the majority of ten annotators."""
    final = Path(out)
    if final.exists():
        raise DataError(f"{final} already exists; choose another --out or remove it")
    if len(paths) < 2:
        raise DataError("give at least two models to average (--model A --model B ...)")
    if weights is not None and (len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0):
        raise DataError(f"--weights: give {len(paths)} non-negative numbers, one per --model, not all zero")
    vote_table = fer_votes.read(votes) if votes else None  # before the models load: a bad file fails fast
    loaded = [evaluate.load_run(path) for path in paths]
    first = loaded[0][1]
    for path, (_, manifest) in zip(paths[1:], loaded[1:]):
        if (manifest.labels, manifest.input_size, manifest.color) != (first.labels, first.input_size, first.color):
            raise DataError(f"{path} has classes {list(manifest.labels)} at {manifest.input_size} px "
                            f"{manifest.color}; {paths[0]} has {list(first.labels)} at {first.input_size} px "
                            f"{first.color}")
    lists = [model.get_weights() for model, _ in loaded]
    for path, weights_of in zip(paths[1:], lists[1:]):
        if [w.shape for w in weights_of] != [w.shape for w in lists[0]]:
            raise DataError(f"{path} is not the same architecture as {paths[0]}: its weights differ in shape; "
                            "only models of one architecture can be averaged")
    started = time.time()
    model = loaded[0][0]
    model.set_weights(mean_weights(lists, weights))
    splits = load_splits(data, first.input_size, first.color)
    if vote_table is not None:
        splits = fer_votes.attach_splits(splits, vote_table)
    evaluate.check_compatible(model, first, splits.train.labels)
    recompute_batchnorm(model, splits.train.x)
    report = evaluate.evaluate_model(model, splits.val, first)
    log.info("averaged %d models, BatchNorm measured on %d images: val accuracy %.4f (%.0f s)", len(paths),
             len(splits.train), report["accuracy"], time.time() - started)

    parents = []
    for i, (path, (_, manifest)) in enumerate(zip(paths, loaded)):
        file = evaluate.model_file(path)
        parents.append({"model": str(file), "sha256": mf.sha256_file(file),
                        "weight": 1.0 if weights is None else weights[i],
                        "float_val_accuracy": manifest.source.get("float_val_accuracy")})
    # The first model's lineage (parent, recipe, epochs) stays: for snapshots of one run it is theirs.
    source = {**first.source, "trained_on": str(data), "averaged": parents, "batchnorm_images": len(splits.train),
              "float_val_accuracy": round(report["accuracy"], 4)}
    work = final.with_name(final.name + ".incomplete")
    work.mkdir(parents=True, exist_ok=True)  # an interrupted earlier attempt is overwritten
    model.save(work / "model.keras")
    mf.save(first.replace(source=source, verification={}), work / "manifest.json")
    evaluate.write_report(report, work)
    work.rename(final)
    return final


def valid_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"--weights {text}: give comma-separated numbers, e.g. 1,1,2") from None
