"""``python -m training fit``: load data -> augment -> build -> train -> evaluate -> run directory.

A run is written to ``OUT.incomplete/`` and renamed to ``OUT/`` only when it
is complete.  Running the same command again after an interruption resumes
from the last finished epoch (``keras.callbacks.BackupAndRestore``).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from device import manifest as mf
from training import average, distill, evaluate, init as inits, model as models, votes as fer_votes
from training.augment import Augment
from training.config import FitConfig
from training.data import DataError, Dataset, Splits, load_splits

log = logging.getLogger(__name__)

CLASSIFIER = "classifier"


def class_weights(y: np.ndarray, num_classes: int, kind: str) -> dict[int, float] | None:
    if kind == "none":
        return None
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    if kind == "sqrt":
        weights = np.sqrt(weights)
        weights = weights / weights.mean()
    out = {int(c): float(w) for c, w in zip(present, weights)}
    return {c: out.get(c, 1.0) for c in range(num_classes)}


def targets(y: np.ndarray, num_classes: int, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return y.astype("float32").reshape(-1, 1)
    return keras.utils.to_categorical(y, num_classes).astype("float32")


def train_targets(cfg: FitConfig, data: Dataset, num_classes: int) -> np.ndarray:
    """The vote distribution (FER+'s probability protocol), else the label one-hot (and the majority vote's)."""
    if data.votes is not None and cfg.vote_targets == "probability":
        return data.votes.astype("float32")
    return targets(data.y, num_classes, cfg.activation)


def make_optimizer(cfg: FitConfig, steps_per_epoch: int, epochs: int, lr: float) -> keras.optimizers.Optimizer:
    if cfg.schedule == "cosine":
        warmup = steps_per_epoch * min(cfg.warmup_epochs, epochs - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr / 10 if warmup else lr, decay_steps=max(1, steps_per_epoch * epochs - warmup),
            warmup_target=lr if warmup else None, warmup_steps=warmup, alpha=0.01)
    else:
        rate = lr
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(rate)


def build_training_model(cfg: FitConfig, labels: tuple[str, ...], channels: int,
                         init: inits.InitModel | None = None) -> tuple[keras.Model, keras.Model]:
    """(train_model, classifier): the classifier is what ships; training wraps it with augmentation."""
    if init is not None:
        classifier = init.classifier(labels, cfg.dropout, cfg.activation, CLASSIFIER)
        models.set_bn_momentum(classifier, cfg.bn_momentum)
    else:
        classifier = models.build(cfg.arch, len(labels), cfg.input_size, channels, alpha=cfg.alpha,
                                  weights=cfg.weights, dropout=cfg.dropout, activation=cfg.activation,
                                  bn_momentum=cfg.bn_momentum, name=CLASSIFIER)
    inputs = keras.Input((cfg.input_size, cfg.input_size, channels), name="image")
    x = Augment(seed=cfg.seed, name="augment")(inputs) if cfg.augment else inputs
    return keras.Model(inputs, classifier(x), name="train_model"), classifier


def compile_model(model: keras.Model, cfg: FitConfig, optimizer: keras.optimizers.Optimizer) -> None:
    if cfg.activation == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def set_backbone_trainable(classifier: keras.Model, trainable: bool, freeze_batchnorm: bool) -> None:
    base = models.base_layer(classifier)
    if base is None:
        return
    base.trainable = trainable
    if trainable and freeze_batchnorm:  # keras-io: fine-tune a pretrained base with BatchNorm kept frozen
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def run_manifest(cfg: FitConfig, labels: tuple[str, ...], init: inits.InitModel | None = None,
                 votes: fer_votes.Votes | None = None, splits: Splits | None = None) -> mf.Manifest:
    """The run's manifest, with its lineage: the parent model (``--init``), the recipe and the epochs added."""
    arch = {"arch": cfg.arch, "alpha": cfg.alpha}
    if init is not None:  # the architecture is the parent's, whatever the flags say
        arch = {k: init.source[k] for k in ("arch", "alpha") if k in init.source} or {"arch": "from --init"}
    source = {**arch, "trained_on": str(cfg.data), "parent": init.lineage(labels) if init else None,
              "epochs_added": cfg.epochs, "recipe": cfg.to_dict()}
    if votes is not None:
        source["votes"] = {**votes.lineage(), "targets": cfg.vote_targets,
                           "train": splits.train.vote_counts if splits else None}
    # Scaling is the model's first layer, so the model takes raw pixels.
    return mf.Manifest(labels=labels, input_size=cfg.input_size, color=cfg.color, scale=1.0, offset=0.0,
                       activation=cfg.activation, source=source,
                       tools={"keras": keras.__version__, "backend": keras.backend.backend()})


def best_so_far(history_csv: Path) -> float | None:
    if not history_csv.exists():
        return None
    with open(history_csv, newline="") as f:
        values = [float(row["val_accuracy"]) for row in csv.DictReader(f) if row.get("val_accuracy")]
    return max(values) if values else None


def prepare_run(cfg: FitConfig) -> tuple[Path, Path]:
    """(final, work): the run is built in ``OUT.incomplete`` and renamed when complete; seeds and precision set."""
    final = Path(cfg.out)
    if final.exists():
        raise DataError(f"{final} already exists; choose another --out or remove it")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    return final, final.with_name(final.name + ".incomplete")


def fit(cfg: FitConfig) -> Path:
    """Train and write a complete run directory; returns its path."""
    cfg.validate()
    final, work = prepare_run(cfg)
    init = inits.load(cfg.init) if cfg.init else None
    if init is not None:  # before the data loads: a wrong model fails fast
        init = inits.fit_input(init, cfg.input_size, cfg.color)

    votes = fer_votes.read(cfg.votes) if cfg.votes else None  # before the images load: a bad file fails fast
    started = time.time()
    splits = load_splits(cfg.data, cfg.input_size, cfg.color, cfg.val_fraction, cfg.seed, cfg.val,
                         cfg.limit_per_class)
    if votes is not None:
        splits = fer_votes.attach_splits(splits, votes)
    labels, num_classes = splits.labels, len(splits.labels)
    channels = splits.train.x.shape[-1]
    weights = class_weights(splits.train.y, num_classes, cfg.class_weights)
    summary = data_summary(splits, weights, time.time() - started)
    log.info("data: %s", json.dumps(summary))

    # Before the run folder exists: a teacher that does not fit the data leaves nothing behind.
    soft = distill.soft_targets(cfg.teachers, splits.train, work / "soft_targets.npz") if cfg.teachers else None
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (work / "data.json").write_text(json.dumps(summary, indent=2))
    manifest = run_manifest(cfg, labels, init, votes, splits)
    mf.save(manifest, work / "manifest.json")

    train_model, classifier = build_training_model(cfg, labels, channels, init)
    x_train, y_train = splits.train.x, train_targets(cfg, splits.train, num_classes)
    if soft is not None:
        y_train = distill.blend(y_train, soft, cfg.distill)
    val = (splits.val.x, targets(splits.val.y, num_classes, cfg.activation))
    steps = int(np.ceil(len(x_train) / cfg.batch_size))
    phases = [("transfer", cfg.freeze_epochs, cfg.learning_rate)] if cfg.freeze_epochs else []
    fine_tune_lr = cfg.learning_rate / 10 if cfg.freeze_epochs else cfg.learning_rate
    if cfg.epochs > cfg.freeze_epochs:
        phases.append(("train", cfg.epochs - cfg.freeze_epochs, fine_tune_lr))

    first_epoch, timer = 0, EpochTimer()
    for name, epochs, lr in phases:
        done_marker = work / f"{name}.done.weights.h5"
        if done_marker.exists():  # this phase finished before an interruption
            train_model.load_weights(done_marker)
            first_epoch += epochs
            continue
        set_backbone_trainable(classifier, name != "transfer", freeze_batchnorm=cfg.freeze_epochs > 0)
        compile_model(train_model, cfg, make_optimizer(cfg, steps, epochs, lr))
        callbacks = [
            keras.callbacks.BackupAndRestore(str(work / "backup" / name)),
            keras.callbacks.ModelCheckpoint(str(work / "best.keras"), monitor="val_accuracy", mode="max",
                                            save_best_only=True,
                                            initial_value_threshold=best_so_far(work / "history.csv")),
            keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
            timer,
        ]
        if cfg.swa_epochs and name == "train":
            callbacks.append(Snapshots(classifier, work / "snapshots", first_epoch + epochs - cfg.swa_epochs))
        if cfg.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3))
        if cfg.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                           patience=cfg.early_stopping))
        train_model.fit(x_train, y_train, batch_size=cfg.batch_size, epochs=first_epoch + epochs,
                        initial_epoch=first_epoch, validation_data=val, class_weight=weights,
                        callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
        train_model.save_weights(done_marker)
        first_epoch += epochs
    # The shipped model is the best epoch's classifier, without the augmentation layer, or the SWA model.
    best = keras.models.load_model(work / "best.keras", compile=False).get_layer(CLASSIFIER)
    report = evaluate.evaluate_model(best, splits.val, manifest)
    source = dict(manifest.source)
    if cfg.swa_epochs:
        snapshots = sorted((work / "snapshots").glob("epoch_*.weights.h5"))
        swa_model = average.swa(classifier, snapshots, x_train)
        swa_report = evaluate.evaluate_model(swa_model, splits.val, manifest)
        keep = swa_report["accuracy"] > report["accuracy"]
        source["swa"] = {"epochs": len(snapshots), "val_accuracy": round(swa_report["accuracy"], 4),
                         "best_epoch_val_accuracy": round(report["accuracy"], 4),
                         "kept": "swa" if keep else "best epoch"}
        log.info("SWA of the last %d epochs: val accuracy %.4f, best epoch %.4f; keeping the %s", len(snapshots),
                 swa_report["accuracy"], report["accuracy"], source["swa"]["kept"])
        if keep:
            best, report = swa_model, swa_report
    best.save(work / "model.keras")
    report["training"] = {"epochs_this_process": timer.epochs, "seconds_this_process": round(timer.seconds, 1),
                          "images_per_second": round(timer.epochs * len(x_train) / max(timer.seconds, 1e-9), 1)}
    evaluate.write_report(report, work, history_csv=work / "history.csv")
    source["float_val_accuracy"] = round(report["accuracy"], 4)
    mf.save(manifest.replace(source=source), work / "manifest.json")
    markers = [f"{n}.done.weights.h5" for n, _, _ in phases]
    for leftover in ("backup", "best.keras", "soft_targets.npz", "snapshots", *markers):
        path = work / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    work.rename(final)
    log.info("run complete: %s (val accuracy %.4f)", final, report["accuracy"])
    return final


class Snapshots(keras.callbacks.Callback):
    """The classifier's weights after each epoch from ``first`` on (0-based), for SWA; on disk, so that a
    resumed run still has the epochs trained before the interruption."""

    def __init__(self, classifier: keras.Model, folder: Path, first: int):
        super().__init__()
        self.classifier, self.folder, self.first = classifier, folder, first

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.first:
            self.folder.mkdir(exist_ok=True)
            self.classifier.save_weights(self.folder / f"epoch_{epoch + 1:03d}.weights.h5")


class EpochTimer(keras.callbacks.Callback):
    """Wall time of the epochs this process trained (validation included), for images per second."""

    def __init__(self):
        super().__init__()
        self.epochs, self.seconds, self._start = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        self.seconds += time.perf_counter() - self._start


def data_summary(splits: Splits, weights: dict[int, float] | None, seconds: float) -> dict:
    return {
        "labels": list(splits.labels),
        "train": splits.train.counts(),
        "val": splits.val.counts() if splits.val is not None else None,
        "test": splits.test.counts() if splits.test is not None else None,
        "skipped_unreadable": splits.skipped,
        "votes": {name: part.vote_counts for name, part in (("train", splits.train), ("val", splits.val))
                  if part is not None and part.vote_counts is not None} or None,
        "class_weights": {splits.labels[c]: round(w, 4) for c, w in weights.items()} if weights else None,
        "load_seconds": round(seconds, 1),
    }
