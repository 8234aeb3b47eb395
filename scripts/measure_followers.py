"""Cost per face of the candidates for following a face between full detections, and the recall of
the chosen one (optical flow) for several --detect-every values, on the generated crowd clip.

    python scripts/measure_followers.py [--frames 150]

Prints median milliseconds per call (full-frame detection, the short-range model on a crop twice the
box, OpenCV's KCF and MOSSE trackers, Lucas-Kanade flow) and, for N = 1..8, recall against every-frame
full-range detection and the share of frames that needed a full detection.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.config import DetectorConfig  # noqa: E402
from device.detector import FaceDetector  # noqa: E402
from device.scheduler import ScheduledDetector, follow_box, pyramid  # noqa: E402
from tests.clips import Clip  # noqa: E402


def median_ms(fn, repeat: int = 30) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def recall(reference: list, used: list) -> float:
    hits = total = 0
    for ref, run in zip(reference, used):
        for d in ref:
            total += 1
            hits += any(d.box.iou(u.box) >= 0.5 for u in run)
    return hits / total if total else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    args = parser.parse_args()
    clip = Clip(frames=args.frames)
    frames = [clip.frame(i) for i in range(clip.frames)]
    full = FaceDetector(DetectorConfig(model="full"))
    short = FaceDetector(DetectorConfig(model="short"))
    a, b = frames[10], frames[11]
    box = full.detect(a)[0].box
    ga, gb = pyramid(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)), pyramid(cv2.cvtColor(b, cv2.COLOR_BGR2GRAY))
    x0, y0 = max(0, box.x - box.w // 2), max(0, box.y - box.h // 2)
    crop = np.ascontiguousarray(b[y0:y0 + 2 * box.h, x0:x0 + 2 * box.w])
    print(f"face {box.w}x{box.h} px; median ms per call (contended machine: compare rows, not absolutes)")
    print(f"  full-range, whole 640x480 frame   {median_ms(lambda: full.detect(b)):6.2f}")
    print(f"  short-range on a 2x crop          {median_ms(lambda: short.detect(crop)):6.2f}")
    for name, make in (("KCF", getattr(cv2, "TrackerKCF_create", None)),
                       ("MOSSE", getattr(getattr(cv2, "legacy", None), "TrackerMOSSE_create", None))):
        if make is None:
            print(f"  {name:<33} not in this OpenCV")
            continue
        tracker = make()
        tracker.init(a, (box.x, box.y, box.w, box.h))
        print(f"  {name + ' update':<33} {median_ms(lambda: tracker.update(b)):6.2f}")
    print(f"  LK flow (corners, both ways)      {median_ms(lambda: follow_box(ga, gb, box)):6.2f}")
    print(f"  grey pyramid (per frame)          "
          f"{median_ms(lambda: pyramid(cv2.cvtColor(b, cv2.COLOR_BGR2GRAY))):6.2f}")

    reference = [full.detect(f) for f in frames]
    print("detect-every  recall  full-detections")
    for n in (1, 2, 3, 4, 5, 6, 8):
        sched = ScheduledDetector(full, n)
        used = [sched.detect(f) for f in frames]
        print(f"{n:>12}  {recall(reference, used):6.3f}  {sched.stats.full / len(frames):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
