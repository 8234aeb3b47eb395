"""Per-face tracks across frames: IoU matching, probability smoothing, label hysteresis.

Each detection continues the track it overlaps most (greedy, highest IoU
first) or starts a new one.  A track's probabilities are an exponential moving
average, and its shown label changes only when another class beats it by the
hysteresis margin, so labels don't flicker.  The overlay shows, with the label,
the smoothed probabilities that chose it (``Face.shown``): held while another
class leads by less than the margin, so the label is always their top class
(the CSV and MQTT get the smoothed probabilities of every frame).  Tracks
expire after ``max_missed`` frames without a detection.

Tracks belong to one scene: :meth:`Tracker.begin_frame` forgets them all when
a frame starts a new scene (a still image: ids start again at 1, as for the
image alone) or comes in another size than the last (a camera renegotiating).

With ``classify_every`` K > 1 a face that stays where it was last classified
keeps its probabilities for up to K - 1 frames instead of being classified
again (:meth:`Tracker.to_classify`); a new face, or one that moved, is
classified at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.config import TrackerConfig
from device.frames import Box, Detection, Face, Frame


REUSE_IOU = 0.7  # a face that overlaps its last classified box this much has not moved enough to look again


@dataclass
class Track:
    track_id: int
    box: Box
    probs: np.ndarray  # smoothed class probabilities
    shown: np.ndarray  # the smoothed probabilities that chose the label (their top class is the label)
    missed: int = 0
    classified_box: Box | None = None  # where it was last classified
    since_classified: int = 0  # frames since then

    @property
    def label_index(self) -> int:
        return int(self.shown.argmax())


class Tracker:
    def __init__(self, cfg: TrackerConfig, labels: tuple[str, ...]):
        self.cfg, self.labels = cfg, labels
        self.tracks: list[Track] = []
        self._next_id = 1
        self._size: tuple[int, ...] | None = None  # the last frame's height and width

    def reset(self) -> None:
        """Forget every track, its smoothing and its hysteresis; ids start again at 1."""
        self.tracks = []
        self._next_id = 1

    def begin_frame(self, frame: Frame) -> None:
        """Call before matching ``frame``'s detections: a new scene (a still image) starts afresh, and so do
        the tracks when the frame size changes (their boxes are in other pixels; ids go on counting)."""
        size = frame.image.shape[:2]
        if frame.new_scene:
            self.reset()
        elif self._size is not None and size != self._size:
            self.tracks = []
        self._size = size

    def match(self, detections: list[Detection]) -> dict[int, Track]:
        """Detection index -> the track it continues (greedy, highest IoU first); the tracks are not changed."""
        pairs = sorted(((t.box.iou(d.box), ti, di) for ti, t in enumerate(self.tracks)
                        for di, d in enumerate(detections)), reverse=True)
        track_for: dict[int, Track] = {}
        used: set[int] = set()
        for iou, ti, di in pairs:
            if iou < self.cfg.iou_threshold:
                break
            if ti in used or di in track_for:
                continue
            used.add(ti)
            track_for[di] = self.tracks[ti]
        return track_for

    def to_classify(self, detections: list[Detection], matched: dict[int, Track], every: int) -> list[int]:
        """The detections that need new probabilities: all of them when ``every`` is 1; otherwise the new faces,
        those that moved from where they were last classified, and those classified ``every`` frames ago."""
        def fresh(di: int) -> bool:
            track = matched.get(di)
            return (track is not None and track.classified_box is not None and track.since_classified + 1 < every
                    and track.classified_box.iou(detections[di].box) >= REUSE_IOU)
        return [di for di in range(len(detections)) if every <= 1 or not fresh(di)]

    def update(self, detections: list[Detection], probs, matched: dict[int, Track] | None = None) -> list[Face]:
        """Continue the tracks with this frame's detections; ``probs[i]`` is detection i's class probabilities,
        or None where it was not classified this frame (its track keeps its own)."""
        track_for = self.match(detections) if matched is None else matched
        used = {id(t) for t in track_for.values()}
        for track in self.tracks:
            if id(track) not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.cfg.max_missed]

        faces = []
        for di, det in enumerate(detections):
            track = track_for.get(di)
            if probs[di] is None:  # kept from its last classification (to_classify)
                track.since_classified += 1
                track.box, track.missed = det.box, 0
            else:
                p = np.asarray(probs[di], dtype=np.float32)
                if track is None:
                    track = Track(self._next_id, det.box, p.copy(), p.copy())
                    self._next_id += 1
                    self.tracks.append(track)
                else:
                    s = self.cfg.smoothing
                    track.probs = s * track.probs + (1 - s) * p
                    track.box, track.missed = det.box, 0
                    best, shown = int(track.probs.argmax()), track.label_index
                    if best == shown or track.probs[best] - track.probs[shown] > self.cfg.hysteresis:
                        track.shown = track.probs.copy()
                track.classified_box, track.since_classified = det.box, 0
            label = track.label_index
            faces.append(Face(track.track_id, det.box, det.score, track.probs.copy(), self.labels[label],
                              float(track.probs[label]), track.shown.copy()))
        return faces
