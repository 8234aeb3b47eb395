"""``python -m training bench``: training throughput in images per second, on synthetic data.

It times the train step ``fit`` compiles (augmentation layer, classifier, loss,
optimizer) on random uint8 images, with augmentation and without (the two
models take turns, step by step, so both see the same machine load), so the
cost of augmentation shows beside the cost of the model.  Warm-up steps
(graph tracing, first allocations) are left out of the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import keras
import numpy as np

from training.config import FitConfig
from training.data import DataError
from training.fit import build_training_model, compile_model, make_optimizer, targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchResult:
    augment: bool
    batch_size: int
    step_seconds: tuple[float, ...]  # the timed steps, warm-up excluded

    @property
    def median(self) -> float:
        return float(np.median(self.step_seconds))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.step_seconds, 95))

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median


def bench(cfg: FitConfig, steps: int = 20, warmup: int = 3, num_classes: int = 7) -> list[BenchResult]:
    """Time ``steps`` train steps with augmentation on and off, interleaved so both see the same load."""
    if steps < 1 or warmup < 0:
        raise DataError(f"need steps >= 1 and warmup >= 0, got steps {steps}, warmup {warmup}")
    if num_classes < 2 or (cfg.activation == "sigmoid" and num_classes != 2):
        raise DataError(f"classes = {num_classes} does not fit a {cfg.activation} head")
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    channels = 1 if cfg.color == "grayscale" else 3
    rng = np.random.default_rng(cfg.seed)
    x = rng.integers(0, 256, (cfg.batch_size, cfg.input_size, cfg.input_size, channels), dtype=np.uint8)
    y = targets(rng.integers(0, num_classes, cfg.batch_size), num_classes, cfg.activation)
    settings = (True, False)
    models = []
    for augment in settings:
        model, _ = build_training_model(dataclasses.replace(cfg, augment=augment),
                                        tuple(f"class{i}" for i in range(num_classes)), channels)
        compile_model(model, cfg, make_optimizer(cfg, warmup + steps, 1, cfg.learning_rate))
        models.append(model)
    times: list[list[float]] = [[] for _ in settings]
    for step in range(warmup + steps):
        for model, series in zip(models, times):
            start = time.perf_counter()
            model.train_on_batch(x, y)  # returns numpy logs, so the step has finished
            if step >= warmup:
                series.append(time.perf_counter() - start)
    for augment, series in zip(settings, times):
        log.debug("augment %s step ms: %s", augment, ", ".join(f"{t * 1000:.0f}" for t in series))
    return [BenchResult(augment, cfg.batch_size, tuple(series)) for augment, series in zip(settings, times)]


def format_results(cfg: FitConfig, results: list[BenchResult], warmup: int) -> str:
    channels = 1 if cfg.color == "grayscale" else 3
    name = cfg.arch + (f" alpha {cfg.alpha:g}" if cfg.arch == "mobilenetv2" else "")
    lines = [f"{name}, input {cfg.input_size}x{cfg.input_size}x{channels}, batch {cfg.batch_size}, "
             f"{len(results[0].step_seconds)} timed steps after {warmup} warm-up "
             f"({keras.backend.backend()}, {os.cpu_count()} CPUs visible)",
             f"{'augment':<8} {'median ms':>10} {'p95 ms':>10} {'img/s':>8}"]
    for r in results:
        lines.append(f"{'on' if r.augment else 'off':<8} {r.median * 1000:>10.1f} {r.p95 * 1000:>10.1f} "
                     f"{r.images_per_second:>8.1f}")
    on = next((r for r in results if r.augment), None)
    off = next((r for r in results if not r.augment), None)
    if on and off:
        lines.append(f"augmentation adds {(on.median - off.median) * 1000:.1f} ms per step "
                     f"({(on.median / off.median - 1) * 100:+.1f}%)")
    return "\n".join(lines)
