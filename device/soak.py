"""``python -m device soak``: many frames through the real pipeline, watching the process's memory.

A leak of a few bytes a frame is invisible in a test and fatal after weeks on a
Pi.  The soak writes a short video of the demo's moving faces, loops it through
the full pipeline (detector, classifier, tracker, CSV log with daily files), and
compares the resident set size after a warm-up with the size at the end.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import cv2

from device.config import Config, SourceConfig
from device.errors import SourceError
from device.pipeline import Pipeline
from device.sources import DemoSource

CLIP_FRAMES = 300


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_clip(path: Path, cfg: SourceConfig, frames: int = CLIP_FRAMES) -> Path:
    """A video of the demo source's two gliding faces."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.width, cfg.height))
    if not writer.isOpened():
        raise SourceError(f"cannot write {path}")
    demo = DemoSource(dataclasses.replace(cfg, loop=False), frames=frames)
    while (frame := demo.read()) is not None:
        writer.write(frame.image)
    writer.release()
    return path


def soak(config: Config, frames: int, warmup: int) -> str:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        source = config.source
        if source.uri in ("auto", "demo"):
            source = dataclasses.replace(source, uri=str(write_clip(Path(tmp) / "clip.mp4", source)))
        log_cfg = config.log if config.log.csv else dataclasses.replace(config.log, csv=str(Path(tmp) / "csv"),
                                                                         rotate="daily")
        config = dataclasses.replace(config, source=dataclasses.replace(source, loop=True), log=log_cfg,
                                     run=dataclasses.replace(config.run, max_frames=None))
        pipeline = Pipeline(config)
        samples: list[tuple[int, float]] = []
        try:
            start = time.monotonic()
            for n in range(frames):
                if pipeline.step() is None:
                    break
                if n + 1 == warmup or (n + 1) % 1000 == 0:
                    samples.append((n + 1, rss_mb()))
            wall = time.monotonic() - start
            end = rss_mb()  # before close() gives memory back
        finally:
            pipeline.close()
        rows = pipeline.csv.rows_written  # after close: the rows that are in the files
    done, expected = pipeline.stats.frames, pipeline.stats.faces  # one row per face per frame
    base = next((mb for n, mb in samples if n >= warmup), None)
    lines = [f"soak: {done} frames from {source.uri} (looped), {pipeline.stats.faces} faces, "
             f"{done / wall:.1f} fps, {wall:.0f} s",
             f"CSV rows written: {rows} of {expected} expected"
             + ("" if rows == expected else f" ({expected - rows} MISSING)"),
             "frames   RSS MB"] + [f"{n:>6} {mb:>8.1f}" for n, mb in samples]
    if base is None:
        lines.append(f"fewer frames than the warm-up ({warmup}): no growth figure; end RSS {end:.1f} MB")
    else:
        lines.append(f"RSS start (after {warmup} warm-up frames): {base:.1f} MB; RSS end: {end:.1f} MB; "
                     f"growth {100 * (end - base) / base:+.2f}%")
    return "\n".join(lines)
