"""What a full-frame face detection costs on one thread: MediaPipe's Tasks detector on a video's frames, and
the same model file run bare in LiteRT (the network alone, without MediaPipe's pre- and post-processing),
and what share of a frame budget that leaves.

    python scripts/detector_cost.py runs/one360.avi [--frames 100] [--budget-fps 339]

``--budget-fps``: the frame rate a target asks for (for example 10x `fer`'s in the same sitting); the
script prints the milliseconds a frame that allows and the full detection's share of it every N frames.
Run it pinned (``taskset -c 1``) on an idle machine.
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
from device.detector import MODEL_FILES, FaceDetector  # noqa: E402
from device.locations import face_models_dir  # noqa: E402


def timed(fn, items) -> np.ndarray:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t) * 1000)
    return np.array(out[5:])  # the first calls allocate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--budget-fps", type=float, default=0.0)
    args = parser.parse_args()
    capture, frames = cv2.VideoCapture(args.video), []
    while len(frames) < args.frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    if len(frames) < 10:
        print(f"error: {args.video}: fewer than 10 frames could be read", file=sys.stderr)
        return 2
    from ai_edge_litert.interpreter import Interpreter
    print(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} from {args.video}, one thread")
    print(f"{'model':<6} {'MediaPipe detect: median / p95 ms':>34} {'bare network: median ms':>24}")
    cost = {}
    for name in ("full", "short"):
        detector = FaceDetector(DetectorConfig(model=name))
        tasks = timed(detector.detect, frames)
        detector.close()
        net = Interpreter(model_path=str(face_models_dir() / MODEL_FILES[name]), num_threads=1)
        net.allocate_tensors()
        inp = net.get_input_details()[0]
        size = tuple(inp["shape"][1:3])
        inputs = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), size).astype(np.float32)[None] / 127.5 - 1
                  for f in frames]
        bare = timed(lambda x: (net.set_tensor(inp["index"], x), net.invoke()), inputs)
        cost[name] = float(np.median(tasks))
        print(f"{name:<6} {np.median(tasks):>25.2f} / {np.percentile(tasks, 95):.2f} {np.median(bare):>24.2f}")
    if args.budget_fps > 0:
        budget = 1000 / args.budget_fps
        print(f"budget at {args.budget_fps:g} fps: {budget:.2f} ms a frame for everything")
        for n in (1, 2, 3, 4, 5, 8):
            share = cost["full"] / n
            print(f"  full-range every {n} frames: {share:.2f} ms a frame ({share / budget:.0%} of the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
