"""Test videos of real faces at known positions: 1-6 faces moving, entering, leaving, and a scene cut.

The faces are FER2013 validation faces (upscaled from 48 px) and two portraits that ship inside
packages (scikit-image's astronaut, matplotlib's Grace Hopper).  Every face moves along a known
path; ``truth(frame)`` gives each visible face's box (the pasted square), so tests and benchmarks
can check boxes, entries and row counts against it.

Re-create the clip the tests and the benchmark use::

    python -m tests.clips crowd.avi                 # 640x480, 150 frames
    python -m tests.clips crowd360.avi --height 360
    python -m tests.clips one.avi --scene one      # one face, for speed measurements
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.frames import Box

ROOT = Path(__file__).resolve().parents[1]
FER = Path(os.environ.get("FER2013_DIR", ROOT.parent / "shared" / "datasets" / "fer2013"))

# FER2013 validation faces that the full-range model finds alone on grey at 96 and 140 px with
# score >= 0.75 and IoU >= 0.5 with the pasted square (picked once by a probe over the first 40 of each class).
FER_FACES = [("happy", "PublicTest_10130075.jpg"), ("neutral", "PublicTest_10262886.jpg"),
             ("fear", "PublicTest_12212699.jpg"), ("angry", "PublicTest_11832974.jpg"),
             ("sad", "PublicTest_14475126.jpg"), ("surprise", "PublicTest_11056779.jpg"),
             ("disgust", "PublicTest_67559665.jpg"), ("neutral", "PublicTest_10726845.jpg")]
# Face regions (x, y, w, h) of the packaged portraits, with some hair and chin around them.
ASTRONAUT_HEAD = (150, 30, 150, 170)
HOPPER_HEAD = (120, 60, 260, 320)


@dataclass(frozen=True)
class Actor:
    """One face: shown from ``start`` to ``end`` (exclusive) along a lane, sliding in or out at an edge."""

    image: int  # index into the face images
    size: int  # pasted width in px (height follows the image's aspect)
    lane: tuple[float, float]  # lane centre as a fraction of the frame (x, y)
    start: int
    end: int
    enter: str = "pop"  # "pop" (appears), "left" or "right" (slides in from that edge)
    leave: str = "pop"
    phase: float = 0.0


SLIDE = 20  # frames a slide takes


def default_actors(frames: int) -> list[Actor]:
    """Scene one: 1 face, then up to 4 as faces enter, one leaves; a cut at the middle; scene two: 6 faces,
    then 2 leave.  Lanes keep faces apart (3 columns x 2 rows)."""
    cut = frames // 2
    a, b = frames // 6, frames // 3
    return [
        # scene one
        Actor(0, 110, (0.50, 0.30), 0, cut),
        Actor(1, 100, (0.17, 0.72), a, cut, enter="left"),
        Actor(6, 96, (0.83, 0.27), a + 10, b + 20, enter="right", leave="right"),
        Actor(3, 100, (0.50, 0.74), b, cut, phase=1.0),
        # scene two (after the cut every face is new)
        Actor(7, 120, (0.17, 0.27), cut, frames, phase=2.0),
        Actor(8, 130, (0.50, 0.28), cut, frames, phase=0.5),
        Actor(2, 100, (0.83, 0.27), cut, frames - 20, leave="right"),
        Actor(4, 100, (0.17, 0.73), cut, frames, phase=1.5),
        Actor(5, 100, (0.50, 0.74), cut, frames - 30, phase=3.0),
        Actor(9, 110, (0.83, 0.72), cut, frames, phase=2.5),
    ]


def one_face(frames: int) -> list[Actor]:
    """One face (Grace Hopper) moving about the middle for the whole clip: the speed benchmark's clip."""
    return [Actor(9, 200, (0.5, 0.45), 0, frames)]


def face_images() -> list[np.ndarray]:
    """BGR face images: the FER2013 faces, then the astronaut and Grace Hopper."""
    if not FER.is_dir():
        raise FileNotFoundError(f"FER2013 not found at {FER} (set FER2013_DIR)")
    faces = [cv2.cvtColor(cv2.imread(str(FER / "val" / label / name), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
             for label, name in FER_FACES]
    from matplotlib import cbook
    from skimage import data
    x, y, w, h = ASTRONAUT_HEAD
    faces.append(np.ascontiguousarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[y:y + h, x:x + w]))
    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.IMREAD_COLOR)
    x, y, w, h = HOPPER_HEAD
    faces.append(np.ascontiguousarray(hopper[y:y + h, x:x + w]))
    return faces


class Clip:
    """The frames and the known boxes of a clip of ``actors`` on two backgrounds (the cut is where scenes change)."""

    def __init__(self, width: int = 640, height: int = 480, frames: int = 150, actors: list[Actor] | None = None):
        self.width, self.height, self.frames = width, height, frames
        self.actors = actors if actors is not None else default_actors(frames)
        self.cut = frames // 2
        self.images = face_images()
        scale = height / 480  # the lanes' face sizes are for 480 px high frames
        self.tiles = []
        for actor in self.actors:
            image = self.images[actor.image]
            w = int(round(actor.size * scale))
            h = int(round(w * image.shape[0] / image.shape[1]))
            self.tiles.append(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if w < image.shape[1]
                                         else cv2.INTER_LINEAR))
        xs = np.linspace(0, 1, width, dtype=np.float32)
        ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        one = 60 + 70 * xs + 20 * ys  # a left-to-right ramp
        two = 170 - 60 * ys + 25 * np.sin(xs * 9)  # brighter, top-to-bottom, with stripes
        self.backgrounds = [np.dstack([one, one * 0.95, one * 0.9]).astype(np.uint8),
                            np.dstack([two * 0.9, two, two * 0.85]).astype(np.uint8)]

    def _place(self, actor: Actor, tile: np.ndarray, frame: int) -> tuple[int, int] | None:
        if not actor.start <= frame < actor.end:
            return None
        h, w = tile.shape[:2]
        t = frame / 30.0
        cx = actor.lane[0] * self.width + 0.07 * self.width * math.sin(1.3 * t + actor.phase)
        cy = actor.lane[1] * self.height + 0.03 * self.height * math.cos(0.9 * t + actor.phase)
        x, y = cx - w / 2, cy - h / 2
        slides = ((actor.enter, (frame - actor.start) / SLIDE), (actor.leave, (actor.end - frame) / SLIDE))
        for side, progress in slides:
            if side in ("left", "right") and progress < 1:
                edge = -w if side == "left" else self.width
                x = edge + (x - edge) * progress
        return int(round(x)), int(round(y))

    def truth(self, frame: int) -> list[tuple[int, Box]]:
        """(actor index, box) of every face at least half inside ``frame``."""
        out = []
        for i, (actor, tile) in enumerate(zip(self.actors, self.tiles)):
            at = self._place(actor, tile, frame)
            if at is None:
                continue
            box = Box(at[0], at[1], tile.shape[1], tile.shape[0])
            if box.clip(self.width, self.height).w >= box.w / 2:
                out.append((i, box))
        return out

    def frame(self, index: int) -> np.ndarray:
        image = self.backgrounds[index >= self.cut].copy()
        for actor, tile in zip(self.actors, self.tiles):
            at = self._place(actor, tile, index)
            if at is not None:
                paste(image, tile, *at)
        return image

    def write(self, path: str | Path, fps: int = 30) -> Path:
        """An MJPG video (lossy like a camera's, readable by OpenCV everywhere)."""
        path = Path(path)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (self.width, self.height))
        if not writer.isOpened():
            raise OSError(f"cannot write {path}")
        for i in range(self.frames):
            writer.write(self.frame(i))
        writer.release()
        return path


def paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
    """Paste ``tile`` with its top-left at (x, y), clipped to the canvas."""
    h, w = tile.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(canvas.shape[1], x + w), min(canvas.shape[0], y + h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = tile[y0 - y:y1 - y, x0 - x:x1 - x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.clips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the video to write (.avi, MJPG)")
    parser.add_argument("--width", type=int, default=640, help="frame width (default: 640)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default: 480)")
    parser.add_argument("--frames", type=int, default=150, help="frames (default: 150; the cut is at the middle)")
    parser.add_argument("--scene", choices=("crowd", "one"), default="crowd",
                        help="crowd: 1-6 faces entering, leaving, a cut; one: one face moving (default: crowd)")
    args = parser.parse_args(argv)
    try:
        actors = one_face(args.frames) if args.scene == "one" else None
        clip = Clip(args.width, args.height, args.frames, actors)
        clip.write(args.out)
    except (OSError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = [len(clip.truth(i)) for i in range(clip.frames)]
    print(f"{args.out}: {clip.frames} frames {args.width}x{args.height}, {min(counts)}-{max(counts)} faces, "
          f"cut at frame {clip.cut}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
