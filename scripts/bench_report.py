#!/usr/bin/env python3
"""Benchmark ``python -m device report`` on a generated month-long log: rows/s and peak RSS.

    python scripts/bench_report.py --rows 1000000

The log is written in the CSV log's own format (device.csvlog.format_rows): 30 days, a 2 fps
camera, 0-3 faces a frame, tracks of a few minutes, four runs appended to one file; "happy"
is likelier around midday (UTC), so the plots show a daily rhythm.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device.csvlog import columns, format_rows, utc_stamp  # noqa: E402
from device.frames import Box, Face, Frame  # noqa: E402

LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def write_log(path: Path, rows: int, days: float = 30.0, runs: int = 4, seed: int = 0) -> int:
    """A log of about ``rows`` rows spread over ``days``; returns the rows written."""
    rng = np.random.default_rng(seed)
    frames = int(rows / 1.5)  # 1.5 faces a frame on average
    step = timedelta(seconds=days * 86400 / frames)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    image = np.zeros((1, 1, 3), np.uint8)
    written, track, track_left, label = 0, 0, 0, 4
    with open(path, "w") as f:
        f.write(",".join(columns(LABELS)) + "\n")
        for i in range(frames):
            run_frame = i % (frames // runs + 1)  # frame numbers restart at each run
            if track_left <= 0:
                track, track_left = track + 1, int(rng.integers(50, 600))
            track_left -= 1
            if rng.random() < 0.02:
                when = start + i * step
                midday = 0.5 + 0.5 * np.cos(2 * np.pi * (when.hour + when.minute / 60 - 13) / 24)
                happy = rng.random() < 0.6 * midday
                label = LABELS.index("happy") if happy else int(rng.integers(0, len(LABELS)))
            faces = []
            for k in range(int(rng.integers(0, 4))):
                probs = rng.dirichlet(np.ones(len(LABELS)))
                faces.append(Face(track + k, Box(10 + 60 * k, 20, 50, 50), 0.9, probs, LABELS[(label + k) % 7],
                                  float(probs.max())))
            run = utc_stamp(start + (i - run_frame) * step)  # the run's start, as the CSV's run column says
            f.write(format_rows(Frame(image, run_frame, "cam", start + i * step), faces, run))
            written += len(faces)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated log (default: 1000000)")
    parser.add_argument("--keep", help="write the log and the report here instead of a temporary folder")
    parser.add_argument("--log", help="time the report on this log instead of a generated one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        log = Path(args.log) if args.log else folder / "month.csv"
        if args.log:
            rows = sum(1 for _ in open(log, "rb")) - 1
        else:
            rows = write_log(log, args.rows)
        print(f"log: {rows:,} rows, {log.stat().st_size / 1e6:.0f} MB")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "device", "report", str(log), "--out", str(folder / "report")],
                       check=True, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"report: {elapsed:.1f} s, {rows / elapsed:,.0f} rows/s, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
