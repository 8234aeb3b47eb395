"""Frames per second of the `fer` package (FER(mtcnn=False): OpenCV's Haar cascade + its TFLite model, its
defaults) on a video, headless, the way device bench measures ours: warm-up frames first, then the
file looped until ``--frames`` frames are timed.  Run inside the venv that scripts/compare_fer.sh makes.

    python scripts/fer_fps.py VIDEO [--frames 300] [--warmup 20]
"""

import argparse
import sys
import time

import cv2


def frames_of(path: str):
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        sys.exit(f"error: cannot open {path}")
    while True:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read()
            if not ok:
                sys.exit(f"error: no frames in {path}")
        yield frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, default=300, help="frames to time (default: 300)")
    parser.add_argument("--warmup", type=int, default=20, help="frames before timing (default: 20)")
    args = parser.parse_args()
    from fer.fer import FER  # fer's package __init__ exports nothing
    detector = FER(mtcnn=False)
    source = frames_of(args.video)
    for _ in range(args.warmup):
        detector.detect_emotions(next(source))
    faces = 0
    start = time.perf_counter()
    for _ in range(args.frames):
        faces += len(detector.detect_emotions(next(source)))
    wall = time.perf_counter() - start
    print(f"fer: {args.frames} frames, {faces / args.frames:.2f} faces per frame")
    print(f"end-to-end: {args.frames / wall:.1f} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
