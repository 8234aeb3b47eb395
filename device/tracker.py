"""Per-face tracks across frames: IoU matching, probability smoothing, label hysteresis.

Each detection continues the track it overlaps most (greedy, highest IoU
first) or starts a new one.  A track's probabilities are an exponential moving
average, and its shown label changes only when another class beats it by the
hysteresis margin, so labels don't flicker.  Tracks expire after
``max_missed`` frames without a detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.config import TrackerConfig
from device.frames import Box, Detection, Face


@dataclass
class Track:
    track_id: int
    box: Box
    probs: np.ndarray
    label_index: int
    missed: int = 0


class Tracker:
    def __init__(self, cfg: TrackerConfig, labels: tuple[str, ...]):
        self.cfg, self.labels = cfg, labels
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, detections: list[Detection], probs: np.ndarray) -> list[Face]:
        """Match this frame's detections (with their class probabilities) to tracks."""
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
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.cfg.max_missed]

        faces = []
        for di, det in enumerate(detections):
            p = np.asarray(probs[di], dtype=np.float32)
            track = track_for.get(di)
            if track is None:
                track = Track(self._next_id, det.box, p.copy(), int(p.argmax()))
                self._next_id += 1
                self.tracks.append(track)
            else:
                s = self.cfg.smoothing
                track.probs = s * track.probs + (1 - s) * p
                track.box, track.missed = det.box, 0
                best = int(track.probs.argmax())
                if track.probs[best] - track.probs[track.label_index] > self.cfg.hysteresis:
                    track.label_index = best
            faces.append(Face(track.track_id, det.box, det.score, track.probs.copy(),
                              self.labels[track.label_index], float(track.probs[track.label_index])))
        return faces
