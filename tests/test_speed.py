"""Detection scheduling, the threaded runner and the bench's recall and agreement, on generated clips of
real faces (tests/clips.py: FER2013 faces and packaged portraits, 1-6 faces entering, leaving, a cut)."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from device.config import (ClassifierConfig, Config, DetectorConfig, LogConfig, RunConfig, SourceConfig,
                           TrackerConfig)
from device.errors import SourceError
from device.frames import Box, Detection
from device.sources import FrameSource
from device.tracker import Tracker
from tests.clips import FER, Clip, one_face
from tests.conftest import ROOT
from tests.test_service import Recorder as EventRecorder

FACE_DIR = ROOT / "models"
MODEL = ROOT / "models" / "emotion_fer2013.tflite"  # the shipped model: real labels for the agreement check
DEFAULT_EVERY = DetectorConfig().detect_every


def need_data() -> None:
    if not FER.is_dir():
        pytest.skip(f"FER2013 not found at {FER}")
    if not (FACE_DIR / "face_detection_full_range_sparse.tflite").is_file():
        pytest.skip("face models missing: python -m device models")


@pytest.fixture(scope="module")
def clip() -> Clip:
    need_data()
    return Clip(frames=150)


@pytest.fixture(scope="module")
def clip_video(clip, tmp_path_factory) -> Path:
    return clip.write(tmp_path_factory.mktemp("clips") / "crowd.avi")


def run_device(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def matched(box: Box, boxes) -> bool:
    return any(box.iou(b) >= 0.5 for b in boxes)


# -- scheduling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", [480, 360])
def test_scheduled_detection_keeps_recall_finds_entering_faces_and_detects_at_a_cut(height):
    from device.detector import FaceDetector
    from device.scheduler import ScheduledDetector

    need_data()
    clip = Clip(height=height, frames=150)
    frames = [clip.frame(i) for i in range(clip.frames)]
    detector = FaceDetector(DetectorConfig(models_dir=str(FACE_DIR)))
    try:
        reference = [[d.box for d in detector.detect(f)] for f in frames]
        scheduled = ScheduledDetector(detector, DEFAULT_EVERY)
        used = [[d.box for d in scheduled.detect(f)] for f in frames]
    finally:
        detector.close()
    assert DEFAULT_EVERY > 1
    hits = sum(matched(box, run) for ref, run in zip(reference, used) for box in ref)
    total = sum(len(ref) for ref in reference)
    assert total > 350 and max(len(r) for r in reference) == 6
    assert hits / total >= 0.98, (hits, total)
    # the point of it: most frames skip the full detection
    assert scheduled.stats.full <= 0.6 * clip.frames and scheduled.stats.followed >= 0.4 * clip.frames
    # the cut is seen and detected at once: the boxes there are the every-frame ones
    assert scheduled.stats.cuts == 1 and used[clip.cut] == reference[clip.cut]
    # every face that enters mid-scene (popping in or sliding in from an edge) is found within N frames of
    # the first frame where every-frame detection finds it at its known position
    entering = [i for i, a in enumerate(clip.actors) if 0 < a.start != clip.cut and a.image < len(clip.images) - 2]
    assert len(entering) >= 3
    for actor in entering:
        truth = {f: box for f in range(clip.frames) for i, box in clip.truth(f) if i == actor}
        first = next(f for f in sorted(truth) if matched(truth[f], reference[f]))
        found = next(f for f in sorted(truth) if f >= first and matched(truth[f], used[f]))
        assert found - first < DEFAULT_EVERY, (actor, first, found)


def test_detect_every_1_is_todays_detector(clip):
    from device.detector import FaceDetector
    from device.scheduler import ScheduledDetector

    detector = FaceDetector(DetectorConfig(models_dir=str(FACE_DIR)))
    try:
        scheduled = ScheduledDetector(detector, 1)
        for i in (0, 40, 100):
            frame = clip.frame(i)
            assert scheduled.detect(frame) == detector.detect(frame)
    finally:
        detector.close()
    assert scheduled.stats.full == 3 and scheduled.stats.followed == 0


def run_ahead(scheduled, frames, lead: int = 4) -> list[list[Box]]:
    """The runner's order of calls: the reading stage offers each frame ``lead`` frames before detect() gets it."""
    used = []
    for i in range(len(frames) + lead):
        if i < len(frames):
            scheduled.offer(i, frames[i])
        if i >= lead:
            used.append([d.box for d in scheduled.detect(frames[i - lead], i - lead)])
    return used


@pytest.mark.parametrize("scene", ["crowd", "one"])
def test_lookahead_runs_full_detections_ahead_and_changes_no_box(scene):
    from device.detector import FaceDetector
    from device.scheduler import Lookahead, ScheduledDetector

    need_data()
    clip = Clip(frames=150) if scene == "crowd" else Clip(frames=150, actors=one_face(150))
    frames = [clip.frame(i) for i in range(clip.frames)]
    cfg = DetectorConfig(models_dir=str(FACE_DIR))
    alone = ScheduledDetector(FaceDetector(cfg), DEFAULT_EVERY)
    ahead = ScheduledDetector(FaceDetector(cfg), DEFAULT_EVERY, Lookahead(FaceDetector(cfg), DEFAULT_EVERY))
    try:
        expected = [[d.box for d in alone.detect(f)] for f in frames]
        used = run_ahead(ahead, frames)
    finally:
        alone.close()
        ahead.close()
    # the same schedule and the same boxes as on one thread: the second detector sees the same frames
    assert used == expected and ahead.stats == dataclasses.replace(alone.stats, ahead=ahead.stats.ahead)
    assert ahead.lookahead._pool._shutdown
    periodic = ahead.stats.full - ahead.stats.cuts - ahead.stats.changes - 1  # less the first frame
    if scene == "one":  # one face, one cut: every periodic detection was run ahead
        assert ahead.stats.ahead >= periodic > 0.25 * clip.frames
    else:  # faces entering and leaving trigger detections off the chain; those run here
        assert 0.5 * ahead.stats.full <= ahead.stats.ahead < ahead.stats.full


class Counting:
    """A fake detector: one face at a fixed box; records the frames it ran on; fails on a given frame value."""

    cfg = DetectorConfig()

    def __init__(self, fail_on: int | None = None):
        self.ran, self.fail_on, self.near_misses, self.closed = [], fail_on, 0, False

    def detect(self, bgr):
        self.ran.append(int(bgr[0, 0, 0]))
        if bgr[0, 0, 0] == self.fail_on:
            raise RuntimeError("detector failed")
        return [Detection(Box(100, 100, 80, 80), 0.9)]

    def close(self):
        self.closed = True


def test_lookahead_follows_the_schedule_resets_after_a_source_change_and_passes_errors_on():
    from device.scheduler import Lookahead, ScheduledDetector

    frames = [np.full((240, 320, 3), i, np.uint8) for i in range(12)]
    here, there = Counting(), Counting()
    scheduled = ScheduledDetector(here, 1, Lookahead(there, 1))  # every frame: the lookahead does them all
    assert run_ahead(scheduled, frames) == [[Box(100, 100, 80, 80)]] * 12
    assert here.ran == [0] and there.ran == list(range(1, 12))  # the first frame starts the chain
    assert scheduled.stats.full == 12 and scheduled.stats.ahead == 11
    # a new source numbers its frames from 0 again: other images under the same indices run here
    fresh = [np.full((240, 320, 3), 100 + i, np.uint8) for i in range(3)]
    scheduled.offer(0, fresh[0])
    assert scheduled.detect(fresh[0], 0) and here.ran[-1] == 100
    # an error on the lookahead's thread is raised by detect(), on the detect stage's thread
    failing = ScheduledDetector(Counting(), 1, Lookahead(Counting(fail_on=2), 1))
    with pytest.raises(RuntimeError, match="detector failed"):
        run_ahead(failing, frames)
    scheduled.close()
    failing.close()
    assert here.closed and there.closed and failing.lookahead.detector.closed


def test_flow_follows_a_moving_face_and_gives_up_on_a_blank():
    import cv2
    import numpy as np
    from device.scheduler import follow_box, pyramid

    if not FER.is_dir():
        pytest.skip("FER2013 not available")
    clip = Clip(frames=60, actors=one_face(60))
    a, b = clip.frame(10), clip.frame(11)
    (_, before), = clip.truth(10)
    (_, after), = clip.truth(11)
    gray = [pyramid(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)) for x in (a, b)]
    moved = follow_box(gray[0], gray[1], before)
    assert before != after and moved.iou(after) >= 0.9
    assert abs(moved.x - after.x) <= 1 and abs(moved.y - after.y) <= 1
    blank = pyramid(np.full_like(gray[0][0], 120))
    assert follow_box(blank, blank, before) is None  # nothing to follow: detect instead


# -- the bench's measures -------------------------------------------------------------------------
def test_compare_counts_recall_and_label_agreement():
    from device.bench import Seen, compare

    face, other = Box(10, 10, 100, 100), Box(300, 10, 100, 100)
    reference = {0: Seen((face, other), ("happy", "sad")), 1: Seen((face,), ("happy",)),
                 2: Seen((face,), ("happy",))}
    run = {0: Seen((Box(15, 12, 100, 100),), ("happy",)),  # other missed
           1: Seen((Box(60, 60, 100, 100), face), ("sad", "angry")),  # matched by the second box; label differs
           2: Seen((Box(12, 10, 98, 100),), ("happy",))}
    recall, agreement, extra = compare(reference, run)
    assert recall == pytest.approx(3 / 4) and agreement == pytest.approx(2 / 3)
    assert extra == pytest.approx(1 / 4)  # of 4 boxes used, (60, 60) matches no reference face


@pytest.mark.skipif(not MODEL.is_file(), reason="the shipped model is missing")
def test_bench_prints_recall_and_agreement_on_a_crowd_clip(clip_video):
    result = run_device("bench", "--source", str(clip_video), "--model", str(MODEL), "--frames", "150",
                        "--warmup", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    recall = re.search(r"^recall: (\d\.\d{3})$", out, re.M)
    agreement = re.search(r"^agreement: (\d\.\d{2})$", out, re.M)
    assert recall and agreement, out
    assert float(recall.group(1)) >= 0.98 and float(agreement.group(1)) >= 0.95, out
    extra = re.search(r"^extra boxes: (\d\.\d{3}) ", out, re.M)
    assert extra and float(extra.group(1)) <= 0.02, out
    assert f"detect every {DEFAULT_EVERY}" in out and re.search(r"^end-to-end: [\d.]+ fps$", out, re.M)
    full = re.search(r"^full detections: (\d+) of (\d+) frames", out, re.M)
    assert full and int(full.group(1)) < 0.6 * int(full.group(2))


def test_classify_every_keeps_a_still_face_and_classifies_new_moved_and_due_ones():
    tracker = Tracker(TrackerConfig(smoothing=0.5, hysteresis=0.1), ("happy", "sad"))

    def step(dets, every, probs_for):
        matched = tracker.match(dets)
        todo = tracker.to_classify(dets, matched, every)
        probs = [np.array(probs_for[i]) if i in todo else None for i in range(len(dets))]
        return todo, tracker.update(dets, probs, matched)

    a = Detection(Box(0, 0, 100, 100), 0.9)
    assert step([a], 3, {0: [0.9, 0.1]})[0] == [0]  # a new face is classified at once
    still = Detection(Box(2, 1, 100, 100), 0.9)  # IoU 0.95 with where it was classified
    todo, faces = step([still], 3, {})
    assert todo == [] and faces[0].box == still.box and faces[0].track_id == 1
    np.testing.assert_allclose(faces[0].probs, [0.9, 0.1])  # kept, not averaged with itself
    assert step([still], 3, {})[0] == []
    todo, faces = step([still], 3, {0: [0.1, 0.9]})  # classified 3 frames ago: due
    assert todo == [0]
    np.testing.assert_allclose(faces[0].probs, [0.5, 0.5])
    b = Detection(Box(300, 0, 100, 100), 0.9)
    moved = Detection(Box(30, 0, 100, 100), 0.9)  # IoU 0.54: moved too far to keep its probabilities
    todo, faces = step([moved, b], 3, {0: [0.1, 0.9], 1: [0.2, 0.8]})
    assert todo == [0, 1] and [f.track_id for f in faces] == [1, 2]
    assert tracker.to_classify([moved, b], tracker.match([moved, b]), 1) == [0, 1]  # 1: every face, every frame


# -- rows: one per face per processed frame, in order, whatever the threads ------------------------------
def row_key(row: dict) -> tuple:
    return tuple(v for k, v in row.items() if k not in ("timestamp", "run"))  # when, not what


@pytest.mark.skipif(not MODEL.is_file(), reason="the shipped model is missing")
def test_threads_and_scheduling_keep_the_rows(clip_video, tmp_path):
    runs = {"threads": ("--workers", "3"), "two-workers": ("--workers", "2"), "one-thread": ("--workers", "1"),
            "every-frame": ("--workers", "1", "--detect-every", "1"),
            "classify-every-3": ("--workers", "1", "--classify-every", "3")}
    rows = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.csv"
        result = run_device("run", "--source", str(clip_video), "--model", str(MODEL), "--csv", str(out), *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        rows[name] = read_rows(out)
        assert f"done: 150 frames, {len(rows[name])} faces" in result.stdout
    # the runner changes nothing but the speed: the same rows in the same order
    assert [row_key(r) for r in rows["threads"]] == [row_key(r) for r in rows["one-thread"]]
    assert [row_key(r) for r in rows["two-workers"]] == [row_key(r) for r in rows["one-thread"]]
    # scheduled rows have the every-frame shape: frames in order, one row per face, about as many faces
    threaded, every = rows["threads"], rows["every-frame"]
    frames = [int(r["frame"]) for r in threaded]
    assert frames == sorted(frames) and set(frames) == set(range(150))
    assert len({(r["frame"], r["track_id"]) for r in threaded}) == len(threaded)
    assert abs(len(threaded) - len(every)) <= 0.03 * len(every)
    by_frame: dict[int, list[Box]] = {}
    for r in threaded:
        by_frame.setdefault(int(r["frame"]), []).append(Box(*(int(r[k]) for k in "xywh")))
    found = sum(matched(Box(*(int(r[k]) for k in "xywh")), by_frame.get(int(r["frame"]), [])) for r in every)
    assert found / len(every) >= 0.98
    # classification scheduling changes probabilities only: the same faces, boxes and tracks; a face's
    # probabilities stay as they were on at least a third of the rows, and never for more than two frames
    sparse, dense = rows["classify-every-3"], rows["one-thread"]
    boxes = ("frame", "track_id", "x", "y", "w", "h")
    assert [tuple(r[k] for k in boxes) for r in sparse] == [tuple(r[k] for k in boxes) for r in dense]
    probs = [k for k in sparse[0] if k.startswith("p_")]
    last: dict[str, tuple] = {}
    run_length: dict[str, int] = {}
    kept = 0
    for r in sparse:
        p = tuple(r[k] for k in probs)
        same = last.get(r["track_id"]) == p
        kept += same
        run_length[r["track_id"]] = run_length.get(r["track_id"], 0) + 1 if same else 0
        assert run_length[r["track_id"]] <= 2
        last[r["track_id"]] = p
    assert kept >= len(sparse) / 3


# -- the runner keeps the loop's guarantees ------------------------------------------------------------
class Recorder(EventRecorder):
    """A notifier that records events and sets the reload and stop events after given frames."""

    def __init__(self, reload_at: int, stop_at: int):
        super().__init__()
        self.reload, self.stop = threading.Event(), threading.Event()
        self.reload_at, self.stop_at, self.frames = reload_at, stop_at, 0

    def watchdog(self):
        self.frames += 1
        super().watchdog()
        if self.frames == self.reload_at:
            self.reload.set()
        if self.frames == self.stop_at:
            self.stop.set()


def config_for(source: Path, csv_path: Path | None = None, **run) -> Config:
    return Config(source=SourceConfig(uri=str(source)), classifier=ClassifierConfig(model=str(MODEL)),
                  detector=DetectorConfig(models_dir=str(FACE_DIR)),
                  log=LogConfig(csv=str(csv_path) if csv_path else None), run=RunConfig(**run))


@pytest.mark.skipif(not MODEL.is_file(), reason="the shipped model is missing")
@pytest.mark.parametrize("workers", [2, 3])
def test_reload_and_stop_with_threads_lose_no_frame(clip_video, tmp_path, workers):
    from device.pipeline import Pipeline

    out = tmp_path / "rows.csv"
    notifier = Recorder(reload_at=20, stop_at=60)
    pipe = Pipeline(config_for(clip_video, out, workers=workers), notifier, notifier.stop)
    classifier = pipe.classifier
    try:
        stats = pipe.run(notifier.stop, notifier.reload)
    finally:
        pipe.close()
    assert pipe.classifier is not classifier  # reloaded
    first_reload = notifier.events.index("RELOADING")
    assert notifier.events[:first_reload].count("WATCHDOG") >= 20
    # stopped after the current frame: every frame finished is in the CSV, in order, none after the stop
    assert 60 <= stats.frames <= 60 + 1
    rows = read_rows(out)
    assert len(rows) == stats.faces
    assert sorted({int(r["frame"]) for r in rows}) == list(range(stats.frames))


class FailingFile(FrameSource):
    """A file source that fails after ``good`` frames (a corrupt file)."""

    def __init__(self, clip: Clip, good: int):
        super().__init__()
        self.clip, self.good = clip, good

    def read(self):
        if self.index >= self.good:
            raise SourceError("corrupt.avi: broken frame")
        return self._frame(self.clip.frame(self.index))


@pytest.mark.skipif(not MODEL.is_file(), reason="the shipped model is missing")
def test_a_source_error_in_the_reading_thread_reaches_the_caller(clip, clip_video, tmp_path):
    from device.pipeline import Pipeline

    pipe = Pipeline(config_for(clip_video, tmp_path / "rows.csv", workers=3))
    pipe.source.close()
    pipe.source = FailingFile(clip, 7)
    try:
        with pytest.raises(SourceError, match="broken frame"):
            pipe.run()
    finally:
        pipe.close()
    assert pipe.stats.frames == 7 and len(read_rows(tmp_path / "rows.csv")) == pipe.stats.faces


def test_workers_follow_the_cores_this_process_may_use():
    from device.runner import workers_for

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert workers_for(None) == min(3, cores)
    assert workers_for(1) == 1 and workers_for(2) == 2 and workers_for(8) == 3
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                             "from device.runner import workers_for; print(workers_for(None))"],
                            cwd=ROOT, capture_output=True, text=True) if os.path.exists("/usr/bin/taskset") else None
    if pinned is not None:
        assert pinned.stdout.strip() == "1", pinned.stderr


def test_help_documents_the_new_flags():
    result = run_device("run", "--help")
    assert "--detect-every" in result.stdout and "--workers" in result.stdout
    result = run_device("bench", "--help")
    assert "--reference" in result.stdout and "recall" in result.stdout
