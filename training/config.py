"""The training configuration: one typed place, loadable from a TOML recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from training.data import DataError

CHOICES = {
    "arch": ("mobilenetv2", "baseline"),
    "color": ("grayscale", "rgb"),
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("cosine", "plateau", "constant"),
    "class_weights": ("balanced", "sqrt", "none"),
    "activation": ("softmax", "sigmoid"),
    "vote_targets": ("probability", "majority"),
}


@dataclass
class FitConfig:
    data: str = ""
    out: str = "runs/latest"
    val: str | None = None  # a separate labelled folder for validation
    val_fraction: float = 0.1  # stratified split when the data has no val/
    limit_per_class: int | None = None  # subsample, for smoke tests and quick looks
    arch: str = "mobilenetv2"
    alpha: float = 1.0
    input_size: int = 96
    color: str = "grayscale"
    weights: str = "none"  # none | imagenet | PATH
    init: str | None = None  # a Keras classifier to start from (training/init.py)
    activation: str = "softmax"
    dropout: float = 0.3
    bn_momentum: float = 0.99  # keras.applications' 0.999 lags far behind weights trained from scratch
    epochs: int = 30
    freeze_epochs: int = 0  # epochs with the backbone frozen (transfer learning) before fine-tuning
    batch_size: int = 128
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: int = 1
    early_stopping: int = 0  # patience in epochs; 0 is off
    augment: bool = True
    votes: str | None = None  # FER+ votes CSV (training/votes.py): its 8 expressions become the classes
    vote_targets: str = "probability"  # probability: the vote distribution; majority: the top vote, one-hot
    teachers: list[str] = field(default_factory=list)  # models whose mean predictions are distilled (distill.py)
    distill: float = 0.5  # weight of the teachers' probabilities in the targets; the rest is the true label
    swa_epochs: int = 0  # average the last N epochs' weights (SWA) and keep that if it beats the best epoch
    class_weights: str = "balanced"
    mixed_precision: bool = False
    seed: int = 1337

    def validate(self) -> "FitConfig":
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise DataError(f"{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        if not self.data:
            raise DataError("no dataset given (--data)")
        checks = {
            "alpha": 0.1 <= self.alpha <= 2.0, "input_size": 32 <= self.input_size <= 512,
            "dropout": 0 <= self.dropout < 1, "epochs": self.epochs >= 1, "bn_momentum": 0 < self.bn_momentum < 1,
            "freeze_epochs": 0 <= self.freeze_epochs <= self.epochs, "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0, "label_smoothing": 0 <= self.label_smoothing < 1,
            "val_fraction": 0 < self.val_fraction < 1, "warmup_epochs": self.warmup_epochs >= 0,
            "distill": 0 <= self.distill <= 1,
            "swa_epochs": 0 <= self.swa_epochs <= self.epochs - self.freeze_epochs,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise DataError(f"{bad[0]} = {getattr(self, bad[0])!r} is out of range")
        if self.swa_epochs == 1:
            raise DataError("swa_epochs = 1 averages nothing; give 0 (off) or at least 2")
        if self.votes and self.activation != "softmax":
            raise DataError("training on votes needs the softmax activation")
        if self.teachers and self.activation != "softmax":
            raise DataError("distillation (teachers) needs the softmax activation")
        return self

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides: Any) -> "FitConfig":
        return cls.from_dict({**read_recipe(path), **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DataError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_recipe(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"cannot read recipe {path}: {exc}") from None
