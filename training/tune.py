"""``python -m training tune``: a KerasTuner search over the training hyper-parameters.

Each trial builds, compiles and trains a model with the same functions ``fit``
uses, on data loaded once per input size.  The search works in
``OUT.incomplete/`` (KerasTuner's own files go in its ``tuner/`` folder, so
running the same command again resumes the search) and becomes ``OUT/`` once
the results are written: ``results.csv`` and ``results.md`` (one row per trial,
best validation accuracy first) and ``best.toml``, a ``fit`` recipe with the
best trial's values.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner as kt

from device.manifest import write_atomic
from training.config import CHOICES, FitConfig
from training.data import DataError, Splits, load_splits
from training.fit import build_training_model, class_weights, compile_model, make_optimizer, prepare_run, targets

log = logging.getLogger(__name__)

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"
COLUMNS = ("rank", "trial", "val_accuracy", "best_epoch", "epochs", "learning_rate", "batch_size", "optimizer",
           "dropout", "alpha", "input_size", "status")


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies; every other option comes from the FitConfig."""

    learning_rate: tuple[float, float] = (1e-4, 1e-2)  # log-uniform
    batch_size: tuple[int, ...] = (32, 64, 128)
    optimizer: tuple[str, ...] = ("adam", "adamw", "sgd")  # sgd: Nesterov momentum 0.9
    dropout: tuple[float, float] = (0.1, 0.5)  # in steps of 0.1
    alpha: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0)  # MobileNetV2 only
    input_size: tuple[int, ...] = (48, 64, 96)

    def __post_init__(self) -> None:
        lr, dropout = self.learning_rate, self.dropout
        checks = {
            "learning_rate": len(lr) == 2 and 0 < lr[0] <= lr[1],
            "dropout": len(dropout) == 2 and 0 <= dropout[0] <= dropout[1] < 1,
            "batch_size": bool(self.batch_size) and all(b >= 1 for b in self.batch_size),
            "optimizer": bool(self.optimizer) and set(self.optimizer) <= set(CHOICES["optimizer"]),
            "alpha": bool(self.alpha) and all(0.1 <= a <= 2.0 for a in self.alpha),
            "input_size": bool(self.input_size) and all(32 <= s <= 512 for s in self.input_size),
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise DataError(f"search space {bad[0]} = {getattr(self, bad[0])!r} is invalid")

    def sample(self, hp: kt.HyperParameters, cfg: FitConfig) -> FitConfig:
        """``cfg`` with this trial's values (KerasTuner declares each on first use)."""
        return dataclasses.replace(
            cfg,
            learning_rate=hp.Float("learning_rate", *self.learning_rate, sampling="log"),
            batch_size=hp.Choice("batch_size", list(self.batch_size)),
            optimizer=hp.Choice("optimizer", list(self.optimizer)),
            dropout=hp.Float("dropout", *self.dropout, step=0.1),
            alpha=hp.Choice("alpha", list(self.alpha)) if cfg.arch == "mobilenetv2" else cfg.alpha,
            input_size=hp.Choice("input_size", list(self.input_size)),
        )


class _Stop(kt.errors.FatalError):
    """Carries a DataError through KerasTuner, which would otherwise log it as a failed trial and go on."""


class EmotionHyperModel(kt.HyperModel):
    """Builds and trains one trial as ``fit`` would, without writing a run directory."""

    def __init__(self, cfg: FitConfig, space: SearchSpace, data):
        super().__init__(name="emotion")
        self.cfg, self.space, self.data = cfg, space, data

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        trial = self.space.sample(hp, self.cfg)
        try:
            splits = self.data(trial.input_size)
            model, _ = build_training_model(trial, splits.labels, splits.train.x.shape[-1])
        except DataError as exc:
            raise _Stop(str(exc)) from exc
        steps = math.ceil(len(splits.train) / trial.batch_size)
        compile_model(model, trial, make_optimizer(trial, steps, trial.epochs, trial.learning_rate))
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, callbacks=None, epochs=None,
            initial_epoch=0, **kwargs) -> keras.callbacks.History:
        trial = self.space.sample(hp, self.cfg)
        splits: Splits = self.data(trial.input_size)
        n = len(splits.labels)
        callbacks = list(callbacks or [])
        if trial.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3))
        if trial.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max",
                                                           patience=trial.early_stopping))
        return model.fit(splits.train.x, targets(splits.train.y, n, trial.activation),
                         batch_size=trial.batch_size, epochs=epochs or trial.epochs, initial_epoch=initial_epoch,
                         validation_data=(splits.val.x, targets(splits.val.y, n, trial.activation)),
                         class_weight=class_weights(splits.train.y, n, trial.class_weights),
                         callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)


def make_tuner(kind: str, hypermodel: kt.HyperModel, cfg: FitConfig, trials: int, directory: Path) -> kt.Tuner:
    common = dict(objective=kt.Objective(OBJECTIVE, direction="max"), seed=cfg.seed, directory=str(directory),
                  project_name="tuner", overwrite=False)
    if kind == "random":
        return kt.RandomSearch(hypermodel, max_trials=trials, **common)
    if kind == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=trials, **common)
    if kind == "hyperband":  # the number of trials follows from max_epochs; each trial trains up to cfg.epochs
        return kt.Hyperband(hypermodel, max_epochs=cfg.epochs, **common)
    raise DataError(f"tuner must be one of {', '.join(TUNERS)}, got {kind!r}")


def tune(cfg: FitConfig, tuner: str, trials: int, space: SearchSpace | None = None) -> Path:
    """Search, write the results table into ``cfg.out`` and return its path."""
    cfg.validate()
    space = space or SearchSpace()
    if tuner not in TUNERS:
        raise DataError(f"tuner must be one of {', '.join(TUNERS)}, got {tuner!r}")
    if trials < 1:
        raise DataError(f"trials must be at least 1, got {trials}")
    if tuner == "hyperband":
        log.info("hyperband sets its own number of trials from epochs (%d); --trials is not used", cfg.epochs)
    if cfg.freeze_epochs:
        log.warning("tune trains the whole network; freeze_epochs = %d is ignored", cfg.freeze_epochs)
    final, work = prepare_run(cfg)

    @functools.cache
    def data(size: int) -> Splits:
        return load_splits(cfg.data, size, cfg.color, cfg.val_fraction, cfg.seed, cfg.val, cfg.limit_per_class)

    splits = data(min(space.input_size))  # fail on bad data now, not inside a trial
    log.info("data: %d train, %d val images in %d classes", len(splits.train), len(splits.val), len(splits.labels))

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (work / "search.json").write_text(json.dumps({"tuner": tuner, "trials": trials, "objective": OBJECTIVE,
                                                  "space": dataclasses.asdict(space)}, indent=2))
    search = make_tuner(tuner, EmotionHyperModel(cfg, space, data), cfg, trials, work)
    try:
        search.search()
    except _Stop as exc:
        raise DataError(str(exc)) from None

    rows = result_rows(search.oracle, cfg)
    if not any(row["status"] == "COMPLETED" for row in rows):
        failed = [t.message for t in search.oracle.trials.values() if t.message]
        last = failed[-1].strip().splitlines()[-1] if failed else "no trials ran"
        raise DataError(f"no trial completed (last error: {last}); see {work / 'tuner'}")
    write_atomic(work / "results.csv", results_csv(rows).encode())
    write_atomic(work / "results.md", results_markdown(rows, tuner).encode())
    best = rows[0]
    best_cfg = dataclasses.replace(cfg, **{k: best[k] for k in ("learning_rate", "batch_size", "optimizer",
                                                                "dropout", "alpha", "input_size")})
    write_atomic(work / "best.toml", recipe(best_cfg, f"best of {len(rows)} trials: trial {best['trial']}, "
                                                      f"val_accuracy {best['val_accuracy']:.4f}").encode())
    work.rename(final)
    log.info("tuning complete: %s (best val accuracy %.4f)", final, best["val_accuracy"])
    return final


def result_rows(oracle: kt.Oracle, cfg: FitConfig) -> list[dict]:
    """One dict per trial: completed trials best first, then the others."""
    def key(trial):
        done = trial.status == "COMPLETED" and trial.score is not None
        return (not done, -(trial.score or 0.0), trial.trial_id)

    rows = []
    for rank, trial in enumerate(sorted(oracle.trials.values(), key=key), start=1):
        values = trial.hyperparameters.values
        rows.append({
            "rank": rank, "trial": trial.trial_id,
            "val_accuracy": float(trial.score) if trial.score is not None else None,
            "best_epoch": trial.best_step + 1 if trial.score is not None else None,
            "epochs": values.get("tuner/epochs", cfg.epochs),
            "learning_rate": values.get("learning_rate"), "batch_size": values.get("batch_size"),
            "optimizer": values.get("optimizer"), "dropout": values.get("dropout"),
            "alpha": values.get("alpha", cfg.alpha), "input_size": values.get("input_size"),
            "status": str(trial.status),
        })
    return rows


def results_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def results_markdown(rows: list[dict], tuner: str) -> str:
    def cell(name: str, value) -> str:
        if value is None:
            return ""
        if name == "val_accuracy":
            return f"{value:.4f}"
        if name == "learning_rate":
            return f"{value:.2e}"
        if name == "dropout":
            return f"{value:.2f}"
        return str(value)

    lines = [f"# Tuning results ({tuner}, objective {OBJECTIVE})", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---:|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(name, row[name]) for name in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def recipe(cfg: FitConfig, comment: str) -> str:
    """A TOML recipe for ``fit --recipe`` (``out`` left to the command line)."""
    lines = [f"# {comment}", "# python -m training fit --recipe best.toml --out runs/NAME"]
    for name, value in cfg.to_dict().items():
        if value is None or name == "out":
            continue
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"
