"""``python -m device bench``: per-stage latency (median, p95), end-to-end FPS, and what the speed costs.

The run uses the given settings (``--detect-every``, ``--workers``).  For a
file or the demo source the same frames are then run again with today's
every-frame detection on one thread, and the bench prints

- ``recall: 0.993``: the share of the every-frame run's faces that a box of the
  measured run matches at IoU >= 0.5 on the same frame;
- ``agreement: 0.97``: the share of those matched faces that got the same label;
- ``extra boxes: 0.004``: the share of the measured run's boxes that match no
  every-frame face (a box followed after its face went: recall's counterpart).
"""

from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np

from device.config import Config
from device.frames import FrameResult
from device.pipeline import Pipeline
from device.runner import workers_for
from device.sources import is_live
from device.stages import STAGES

MATCH_IOU = 0.5


@dataclasses.dataclass(frozen=True)
class Seen:
    """What the run used on one frame: boxes and labels."""

    boxes: tuple
    labels: tuple


def _run(config: Config, frames: int, warmup: int) -> tuple[Pipeline, list[dict], dict[int, Seen], float]:
    """Run ``warmup`` then ``frames`` frames; the pipeline (closed), stage records, what each frame saw, wall s."""
    pipeline = Pipeline(config)
    seen: dict[int, Seen] = {}
    runner = None
    try:
        runner = pipeline.open_runner()
        step = runner.step if runner else pipeline.step

        def one() -> bool:
            result: FrameResult | None = step()
            if result is None:
                return False
            seen[result.frame.index] = Seen(tuple(f.box for f in result.faces), tuple(f.label for f in result.faces))
            return True

        for _ in range(warmup):
            if not one():
                break
        pipeline.records = []
        start = time.perf_counter()
        for _ in range(frames):
            if not one():
                break
        wall = time.perf_counter() - start
    finally:
        if runner:
            runner.close()
        pipeline.close()
    return pipeline, pipeline.records, seen, wall


def compare(reference: dict[int, Seen], run: dict[int, Seen]) -> tuple[float, float, float]:
    """(recall, agreement, extra) of ``run`` against ``reference`` on the frames both saw; ``extra`` is the
    share of the run's boxes that match no reference face (a followed box kept after the face went)."""
    found = total = same = boxes = unmatched = 0
    for index, ref in reference.items():
        if index not in run:
            continue
        used = run[index]
        for box, label in zip(ref.boxes, ref.labels):
            total += 1
            ious = [box.iou(b) for b in used.boxes]
            best = int(np.argmax(ious)) if ious else -1
            if best >= 0 and ious[best] >= MATCH_IOU:
                found += 1
                same += used.labels[best] == label
        boxes += len(used.boxes)
        unmatched += sum(all(b.iou(r) < MATCH_IOU for r in ref.boxes) for b in used.boxes)
    return (found / total if total else 1.0), (same / found if found else 1.0), (unmatched / boxes if boxes else 0.0)


def bench(config: Config, frames: int, warmup: int, reference: bool = True) -> str:
    # File sources loop so that short clips still give enough frames.
    config = dataclasses.replace(config, source=dataclasses.replace(config.source, loop=True),
                                 run=dataclasses.replace(config.run, max_frames=None))
    pipeline, records, seen, wall = _run(config, frames, warmup)
    n = len(records)
    if n == 0:
        return "no frames processed"
    faces = sum(len(seen[i].boxes) for i in sorted(seen)[-n:])
    sched = pipeline.detector.stats
    lines = [f"device bench: {n} frames from {config.source.uri}, detector {config.detector.model}, "
             f"detect every {config.detector.detect_every}, classify every {config.classifier.classify_every}, "
             f"workers {workers_for(config.run.workers)}, "
             f"classifier threads {config.classifier.threads}, output {config.output.target}, "
             f"csv {'on' if config.log.csv else 'off'}",
             f"machine: {platform.machine()}, {platform.processor() or platform.platform()}",
             f"faces per frame: {faces / n:.2f}"]
    if config.detector.detect_every > 1:
        lines.append(f"full detections: {sched.full} of {sched.full + sched.followed} frames "
                     f"({sched.cuts} cuts, {sched.changes} changes away from the faces, {sched.lost} faces lost by the flow)")
    if pipeline.detector.lookahead is not None:
        lines.append(f"run ahead on another thread: {sched.ahead} of {sched.full} full detections")
    if config.classifier.classify_every > 1:
        lines.append(f"classified: {pipeline.stats.classified} of {pipeline.stats.faces} faces")
    lines.append(f"{'stage':<10}{'median ms':>11}{'p95 ms':>9}")
    for stage in (*STAGES, "total"):
        values = [sum(r.values()) if stage == "total" else r[stage] for r in records]
        lines.append(f"{stage:<10}{np.median(values):>11.2f}{np.percentile(values, 95):>9.2f}")
    lines.append(f"end-to-end: {n / wall:.1f} fps")
    every_frame = (config.detector.detect_every == 1 and config.classifier.classify_every == 1
                   and workers_for(config.run.workers) == 1)
    if reference and not is_live(config.source.uri) and not every_frame:
        base = dataclasses.replace(config, detector=dataclasses.replace(config.detector, detect_every=1),
                                   classifier=dataclasses.replace(config.classifier, classify_every=1),
                                   run=dataclasses.replace(config.run, workers=1),
                                   output=dataclasses.replace(config.output, target="none"),
                                   log=dataclasses.replace(config.log, csv=None))
        _, _, ref_seen, _ = _run(base, frames, warmup)
        recall, agreement, extra = compare(ref_seen, seen)
        lines.append(f"against every-frame detection and classification on one thread ({len(ref_seen)} frames):")
        lines.append(f"recall: {recall:.3f}")
        lines.append(f"agreement: {agreement:.2f}")
        lines.append(f"extra boxes: {extra:.3f} (of the run's boxes, none matching an every-frame face)")
    elif every_frame:
        lines.append("every-frame detection on one thread: the reference itself")
        lines.append("recall: 1.000")
        lines.append("agreement: 1.00")
    elif not reference:
        lines.append("recall and agreement: not measured (--no-reference)")
    else:
        lines.append("recall and agreement: not measured (a live source cannot show the same frames twice)")
    return "\n".join(lines)
