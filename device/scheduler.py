"""Detection scheduling: the full-frame detector every N frames, and cheap optical flow in between.

Full-frame detection is most of a frame's cost.  ``ScheduledDetector`` runs it
every ``detect_every`` frames, and at once when

- the scene changes (a cut: the mean difference of two 32x24 grey thumbnails),
- a part of the picture away from the followed faces changes a lot (a face may be entering),
- a followed face is lost (too few points survive the forward-backward flow check),
- a followed face touches the frame's edge (it may be leaving, or a neighbour entering),
- the last full detection missed a face it had before (its score blinked under the threshold, or it left),
  or saw a candidate just under the threshold (once: not every frame for a face-like poster).

Between full detections each face found by the last one is followed with
pyramidal Lucas-Kanade flow on a few corner points inside its box (OpenCV's
``calcOpticalFlowPyrLK``), at the level of a grey pyramid where the face is
about 100 px wide: the box moves by the points' median displacement and scales
by the median change of their distances to their centre, as MedianFlow does.
The boxes keep the full-range model's convention (size and offset around the
face), so crops and classification don't drift.  A face that enters the frame
is found by the next full detection: within ``detect_every`` frames.

A frame that starts a new scene (``new_scene``: every still image) or comes
in another size than the last one (a camera renegotiating, a folder of photos)
forgets everything first (:meth:`ScheduledDetector.reset`): it gets a full
detection, and nothing is followed into it.

With more than one worker, ``Lookahead`` runs the periodic full detections
ahead, on its own thread and its own detector, on the frames where the
schedule will want them: the reading stage offers each frame as it is decoded,
and the detect stage takes the result when it gets there.  The schedule and
the boxes are exactly those of one thread; only the waiting goes.

Flow was chosen by measurement (scripts/measure_followers.py, on a busy
machine): about 0.5 ms a face, against 0.6 ms for OpenCV's MOSSE (no scale, no
failure check), 5-9 ms for KCF, 2-3 ms for the short-range model on a crop
twice the box (whose boxes follow another convention), and 5-10 ms for a
full-frame detection.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from device.config import DetectorConfig
from device.frames import Box, Detection

log = logging.getLogger(__name__)

THUMB = (32, 24)
MATCH_IOU = 0.5  # a followed face and a detection with this overlap are the same face
CUT_THRESHOLD = 18.0  # mean absolute grey difference (0-255) of two thumbnails that counts as a cut
CHANGE_THRESHOLD = 25  # a thumbnail cell (20x20 px of 640x480) that changed this much changed a lot
CHANGE_CELLS = 2  # cells that must change away from the followed faces to detect at once
MIN_POINTS = 6  # points that must survive the flow check for a face to count as followed
FB_ERROR = 0.7  # px (at the face's level): forward-backward error above which a point is dropped
FLOW_SIZE = 96  # px: a face is followed at the first level of the pyramid where it is at most this wide
LEVELS = 3
LK = dict(winSize=(11, 11), maxLevel=2, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03))


@dataclass
class ScheduleStats:
    full: int = 0  # frames with a full-frame detection
    followed: int = 0  # frames where every face was followed by flow
    cuts: int = 0
    scenes: int = 0  # new scenes: frames marked as one by their source, or of another size than the last
    changes: int = 0  # full detections for a change away from the followed faces
    lost: int = 0
    ahead: int = 0  # full detections that the lookahead had run (or was running) on another thread


def open_detector(cfg: DetectorConfig, ahead: bool = False) -> "ScheduledDetector":
    """The face detector of ``cfg`` (a DetectorConfig), scheduled every ``cfg.detect_every`` frames;
    ``ahead``: full detections run ahead on a second detector and thread (for more than one worker)."""
    from device.detector import FaceDetector
    detector = FaceDetector(cfg)
    try:
        lookahead = Lookahead(FaceDetector(cfg), cfg.detect_every) if ahead else None
    except BaseException:
        detector.close()
        raise
    return ScheduledDetector(detector, cfg.detect_every, lookahead)


def full_detection(detector, bgr: np.ndarray) -> tuple[list[Detection], int]:
    """A full-frame detection and its near misses (candidates just under the threshold)."""
    found = detector.detect(bgr)
    return found, getattr(detector, "near_misses", 0)


class Lookahead:
    """Runs full detections ahead, on a thread of its own, on the frames where the schedule will want them.

    ``offer`` (the reading stage) hands over each decoded frame; ``expect`` (the detect stage) says where the
    next periodic detection falls after a full detection, and the chain goes on every ``every`` frames from
    there; ``take`` gives the result for a frame, waiting if it is still running, or None when that frame
    was not detected ahead.  ``detector`` must be a second instance: MediaPipe's is one thread's at a time."""

    KEEP = 8  # offered frames kept for an expect() that comes after the reader has passed them (a bound:
    # take() drops the frames the detect stage has passed, and the reader is a queue's depth ahead)

    def __init__(self, detector, every: int):
        self.detector, self.every = detector, max(1, every)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="device-detect-ahead")
        self._lock = threading.Lock()
        self._frames: dict[int, np.ndarray] = {}  # offered frames, by index
        self._jobs: dict[int, tuple[np.ndarray, Future]] = {}
        self._next: int | None = None  # the next frame of the chain; None until the first expect()

    def offer(self, index: int, image: np.ndarray) -> None:
        with self._lock:
            self._frames[index] = image
            while len(self._frames) > self.KEEP:
                del self._frames[next(iter(self._frames))]
            self._submit()

    def expect(self, index: int) -> None:
        with self._lock:
            if index == self._next or index in self._jobs:
                return  # the chain already runs through it
            for job in self._jobs.values():
                job[1].cancel()
            self._jobs = {}
            self._next = index
            self._submit()

    def _submit(self) -> None:
        """Start every frame of the chain that has been offered (under the lock)."""
        while self._next is not None and self._next in self._frames:
            image = self._frames[self._next]
            self._jobs[self._next] = (image, self._pool.submit(full_detection, self.detector, image))
            self._next += self.every

    def take(self, index: int, image: np.ndarray) -> tuple[list[Detection], int] | None:
        with self._lock:
            job = self._jobs.pop(index, None)
            for old in [i for i in self._jobs if i < index]:
                self._jobs.pop(old)[1].cancel()
            for old in [i for i in self._frames if i <= index]:
                del self._frames[old]
        if job is None or job[0] is not image:  # not run ahead, or another frame with this index (a new source)
            return None
        return job[1].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.detector.close()


class ScheduledDetector:
    """Wraps a detector (``detect(bgr) -> list[Detection]``, ``close()``) and has the same interface.
    One thread at a time (it keeps the last frame), besides ``offer`` from the reading stage."""

    def __init__(self, detector, detect_every: int = 1, lookahead: Lookahead | None = None):
        self.detector = detector
        self.detect_every = max(1, detect_every)
        self.lookahead = lookahead
        self.stats = ScheduleStats()
        self._since_full = 0
        self._faces: list[Detection] = []
        self._recheck = False
        self._doubtful = False  # the last full detection was repeated because of a near miss
        self._gray: list[np.ndarray] | None = None  # the last frame's grey pyramid
        self._thumb: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the scene: the next frame gets a full detection, and no face is followed into it."""
        self._since_full = 0
        self._faces = []
        self._recheck = self._doubtful = False
        self._gray = self._thumb = None

    @property
    def cfg(self):
        return self.detector.cfg

    def offer(self, index: int, bgr: np.ndarray) -> None:
        """A frame just decoded, before detect() gets to it: the lookahead may start on it."""
        if self.lookahead is not None:
            self.lookahead.offer(index, bgr)

    def _full(self, bgr: np.ndarray, index: int | None) -> tuple[list[Detection], int]:
        self.stats.full += 1
        done = self.lookahead.take(index, bgr) if self.lookahead is not None and index is not None else None
        self.stats.ahead += done is not None
        return done if done is not None else full_detection(self.detector, bgr)

    def _next_full(self, index: int | None, after: int) -> None:
        """The next full detection falls ``after`` frames after frame ``index``, unless something triggers one."""
        if self.lookahead is not None and index is not None:
            self.lookahead.expect(index + after)

    def detect(self, bgr: np.ndarray, index: int | None = None, new_scene: bool = False) -> list[Detection]:
        """Faces in frame number ``index`` (the lookahead needs it; without it every detection is run here);
        ``new_scene``: the frame owes nothing to the last one (a still image), so nothing is carried over."""
        if new_scene or (self._gray is not None and self._gray[0].shape != bgr.shape[:2]):
            self.stats.scenes += 1
            self.reset()
        if self.detect_every == 1:  # today's behaviour, without the grey frames
            found = self._full(bgr, index)[0]
            self._next_full(index, 1)
            return found
        gray = pyramid(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        thumb = cv2.resize(gray[-1], THUMB, interpolation=cv2.INTER_AREA)
        diff = cv2.absdiff(thumb, self._thumb) if self._thumb is not None else None
        cut = diff is not None and float(diff.mean()) > CUT_THRESHOLD
        self.stats.cuts += cut
        followed = None
        if not (cut or self._recheck) and self._since_full + 1 < self.detect_every and self._gray is not None:
            followed = self._follow(self._gray, gray, bgr.shape[1], bgr.shape[0])
            if followed is not None and self._change_elsewhere(diff, self._faces + followed, bgr.shape):
                followed = None  # something appeared or moved where no face is followed: maybe a new face
                self.stats.changes += 1
        if followed is None:
            found, near_misses = self._full(bgr, index)
            # a face that the detector missed this time (a blink of its score, or it left): look again at once
            missed = any(max((f.box.iou(d.box) for d in found), default=0.0) < MATCH_IOU for f in self._faces)
            # a candidate just under the threshold may be a face that the next frame confirms; look again
            # at once, but not on every frame for a face-like poster
            doubtful = near_misses > 0 and not self._doubtful
            self._recheck = not cut and (missed or doubtful)
            self._doubtful = doubtful
            self._faces = found
            self._since_full = 0
            self._next_full(index, 1 if self._recheck else self.detect_every)
        else:
            self._faces = followed
            self._since_full += 1
            self.stats.followed += 1
        self._gray, self._thumb = gray, thumb
        return list(self._faces)

    def _follow(self, prev: list[np.ndarray], gray: list[np.ndarray], width: int,
                height: int) -> list[Detection] | None:
        """Every face moved by flow, or None when one is lost or at the frame's edge (detect instead)."""
        out = []
        for face in self._faces:
            box = follow_box(prev, gray, face.box)
            if box is None:
                self.stats.lost += 1
                return None
            if box.x <= 0 or box.y <= 0 or box.x + box.w >= width or box.y + box.h >= height:
                return None
            out.append(Detection(box, face.score))
        return out

    @staticmethod
    def _change_elsewhere(diff: np.ndarray, faces: list[Detection], shape: tuple) -> bool:
        """Thumbnail cells that changed a lot outside every followed box (grown by a cell)."""
        changed = diff > CHANGE_THRESHOLD
        if changed.sum() < CHANGE_CELLS:
            return False
        sx, sy = THUMB[0] / shape[1], THUMB[1] / shape[0]
        for face in faces:
            b = face.box
            changed[max(0, int(b.y * sy) - 1):int((b.y + b.h) * sy) + 2,
                    max(0, int(b.x * sx) - 1):int((b.x + b.w) * sx) + 2] = False
        return int(changed.sum()) >= CHANGE_CELLS

    def close(self) -> None:
        try:
            if self.lookahead is not None:
                self.lookahead.close()
        finally:
            self.detector.close()


def pyramid(gray: np.ndarray, levels: int = LEVELS) -> list[np.ndarray]:
    """``gray`` at full, half and quarter size: each face is followed at the level where it is small."""
    out = [gray]
    for _ in range(levels - 1):
        out.append(cv2.pyrDown(out[-1]))
    return out


def follow_box(prev: list[np.ndarray], gray: list[np.ndarray], box: Box) -> Box | None:
    """``box`` moved from the grey pyramid ``prev`` to ``gray`` by median flow; None when it cannot be followed."""
    level = 0
    while level + 1 < len(prev) and max(box.w, box.h) >> level > FLOW_SIZE:
        level += 1
    a, b, f = prev[level], gray[level], 1 << level
    if a.shape != b.shape:  # another frame size: flow cannot follow anything across it
        return None
    x0, y0 = max(0, box.x // f), max(0, box.y // f)
    x1, y1 = min(a.shape[1], (box.x + box.w) // f), min(a.shape[0], (box.y + box.h) // f)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    # flow on a window around the box only: whole-frame pyramids would cost several times as much
    pad = max(x1 - x0, y1 - y0) // 2
    wx0, wy0 = max(0, x0 - pad), max(0, y0 - pad)
    a, b = a[wy0:y1 + pad, wx0:x1 + pad], b[wy0:y1 + pad, wx0:x1 + pad]
    # corners in the inner part of the box: the face, not the background around it
    mx, my = (x1 - x0) // 6, (y1 - y0) // 6
    points = cv2.goodFeaturesToTrack(a[y0 - wy0 + my:y1 - wy0 - my, x0 - wx0 + mx:x1 - wx0 - mx], maxCorners=24,
                                     qualityLevel=0.01, minDistance=max(2, (x1 - x0) // 12))
    if points is None or len(points) < MIN_POINTS:
        return None
    points = (points.reshape(-1, 2) + (x0 - wx0 + mx, y0 - wy0 + my)).astype(np.float32)
    ahead, ok, _ = cv2.calcOpticalFlowPyrLK(a, b, points, None, **LK)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(b, a, ahead, None, **LK)
    good = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (np.linalg.norm(back - points, axis=1) < FB_ERROR)
    if good.sum() < MIN_POINTS:
        return None
    p, q = points[good], ahead[good]
    dx, dy = np.median(q - p, axis=0) * f
    # scale: the median change of the points' distances to their centre
    before = np.linalg.norm(p - p.mean(axis=0), axis=1)
    after = np.linalg.norm(q - q.mean(axis=0), axis=1)
    keep = before > 1
    growth = float(np.median(after[keep] / before[keep])) if keep.any() else 1.0
    cx, cy = box.x + box.w / 2 + dx, box.y + box.h / 2 + dy
    w, h = box.w * growth, box.h * growth
    return Box(int(round(cx - w / 2)), int(round(cy - h / 2)), int(round(w)), int(round(h)))
