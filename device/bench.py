"""``python -m device bench``: per-stage latency (median, p95) and end-to-end FPS of the real pipeline."""

from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np

from device.config import Config
from device.pipeline import STAGES, Pipeline


def bench(config: Config, frames: int, warmup: int) -> str:
    # File sources loop so that short clips still give enough frames.
    config = dataclasses.replace(config, source=dataclasses.replace(config.source, loop=True),
                                 run=dataclasses.replace(config.run, max_frames=None))
    pipeline = Pipeline(config)
    try:
        for _ in range(warmup):
            if pipeline.step() is None:
                break
        pipeline.records = []
        faces = pipeline.stats.faces
        start = time.perf_counter()
        for _ in range(frames):
            if pipeline.step() is None:
                break
        wall = time.perf_counter() - start
        faces = pipeline.stats.faces - faces
        records = pipeline.records
    finally:
        pipeline.close()
    n = len(records)
    if n == 0:
        return "no frames processed"
    lines = [f"device bench: {n} frames from {config.source.uri}, detector {config.detector.model}, "
             f"classifier threads {config.classifier.threads}, output {config.output.target}, "
             f"csv {'on' if config.log.csv else 'off'}",
             f"machine: {platform.machine()}, {platform.processor() or platform.platform()}",
             f"faces per frame: {faces / n:.2f}",
             f"{'stage':<10}{'median ms':>11}{'p95 ms':>9}"]
    for stage in (*STAGES, "total"):
        values = [sum(r.values()) if stage == "total" else r[stage] for r in records]
        lines.append(f"{stage:<10}{np.median(values):>11.2f}{np.percentile(values, 95):>9.2f}")
    lines.append(f"end-to-end: {n / wall:.1f} fps")
    return "\n".join(lines)
