"""Photos are not a video: each still image is its own scene, and a change of frame size starts a new one.

The photos are real faces (FER2013 faces upscaled, scikit-image's astronaut, matplotlib's Grace Hopper) pasted
on plain backgrounds in three sizes, ordered so that a video-like run would carry state from one to the next:
the same face moved by 3 px (the follower would follow it), another face where the last one was (the tracker
would continue its track, smoothing and hysteresis), and a photo shrunk (the follower, which took it for the
next frame of the same scene, crashed on the change of size).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import DetectorConfig, SourceConfig, TrackerConfig
from device.frames import Box, Detection, Frame
from device.scheduler import ScheduledDetector, follow_box, pyramid
from device.sources import open_source
from device.tracker import Tracker
from tests.clips import FER, face_images, paste
from tests.conftest import ROOT

FACE_DIR = ROOT / "models"
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
HAPPY, NEUTRAL, ASTRONAUT, HOPPER = 0, 1, 8, 9  # indices into tests.clips.face_images()
# name, (width, height), face image, face width, top-left of the face
PHOTOS = [("a.jpg", (640, 480), HAPPY, 150, (245, 140)),
          ("b.jpg", (300, 200), HAPPY, 70, (115, 58)),  # a.jpg made smaller: the same picture to the follower
          ("c.jpg", (640, 480), ASTRONAUT, 150, (245, 140)),
          ("d.jpg", (640, 480), ASTRONAUT, 150, (248, 142)),  # the same face, 3 px to the right
          ("e.jpg", (640, 480), HAPPY, 150, (250, 150)),  # another face where the astronaut was
          ("f.jpg", (1280, 720), HOPPER, 260, (500, 180)),
          ("g.jpg", (1280, 720), NEUTRAL, 250, (505, 185))]


def need_data() -> None:
    if not FER.is_dir():
        pytest.skip(f"FER2013 not found at {FER}")
    if not (FACE_DIR / "face_detection_full_range_sparse.tflite").is_file():
        pytest.skip("face models missing: python -m device models")


def background(width: int, height: int) -> np.ndarray:
    xs = np.linspace(0, 1, width, dtype=np.float32)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    grey = 70 + 60 * xs + 30 * ys
    return np.dstack([grey, grey * 0.95, grey * 0.9]).astype(np.uint8)


def photo(size: tuple[int, int], face: np.ndarray, width: int, at: tuple[int, int]) -> np.ndarray:
    image = background(*size)
    height = int(round(width * face.shape[0] / face.shape[1]))
    paste(image, cv2.resize(face, (width, height), interpolation=cv2.INTER_CUBIC), *at)
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    need_data()
    faces = face_images()
    folder = tmp_path_factory.mktemp("photos") / "mixed"
    folder.mkdir()
    for name, size, face, width, at in PHOTOS:
        cv2.imwrite(str(folder / name), photo(size, faces[face], width, at), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def run_device(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def rows_by_image(path: Path) -> dict[str, list[tuple]]:
    """The rows of a CSV log per source image, without what differs between runs (time, run, frame number)."""
    out: dict[str, list[tuple]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            kept = tuple(v for k, v in row.items() if k not in ("timestamp", "run", "frame", "source"))
            out.setdefault(row["source"], []).append(kept)
    return out


# -- the follower ------------------------------------------------------------------------------------------


def test_follow_box_across_a_change_of_size_is_none_not_a_crash(photos):
    """OpenCV's calcOpticalFlowPyrLK asserted (lkpyramid.cpp: prevPyr...) on two frames of different sizes."""
    a = cv2.cvtColor(cv2.imread(str(photos / "c.jpg")), cv2.COLOR_BGR2GRAY)
    face, corner = Box(245, 140, 150, 170), Box(480, 300, 150, 170)  # corner: its flow window meets the edge
    assert follow_box(pyramid(a), pyramid(a), face) == face  # the same frame: the box stays
    assert follow_box(pyramid(a), pyramid(cv2.resize(a, (300, 200))), face) is None
    assert follow_box(pyramid(a), pyramid(cv2.resize(a, (1280, 720))), corner) is None


class CountingDetector:
    """A real MediaPipe detector that counts its full-frame detections."""

    def __init__(self):
        from device.detector import FaceDetector
        self.inner = FaceDetector(DetectorConfig(models_dir=str(FACE_DIR)))
        self.cfg, self.calls = self.inner.cfg, 0

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.inner.detect(bgr)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def detector():
    need_data()
    d = CountingDetector()
    yield d
    d.close()


def test_a_change_of_frame_size_starts_a_new_scene(photos, detector):
    """A live source renegotiating its size mid-stream: no crash, a full detection on the new size."""
    scheduled = ScheduledDetector(detector, detect_every=3)
    a = cv2.imread(str(photos / "c.jpg"))
    frames = [a, a, cv2.resize(a, (1280, 960)), cv2.resize(a, (1280, 960)), cv2.resize(a, (320, 240))]
    found = [scheduled.detect(image, i) for i, image in enumerate(frames)]
    # frames 0, 2 and 4 (a new size each) are detected in full; 1 and 3 are followed
    assert detector.calls == 3 and scheduled.stats.full == 3 and scheduled.stats.followed == 2
    assert scheduled.stats.scenes == 2
    first = found[0][0].box
    for image, faces in zip(frames, found):  # the same face, scaled with the frame
        scale = image.shape[1] / 640
        assert len(faces) == 1
        assert faces[0].box.iou(Box(*(int(v * scale) for v in (first.x, first.y, first.w, first.h)))) > 0.8


def test_new_scene_detects_in_full_and_follows_nothing(photos, detector):
    """d.jpg is c.jpg moved by 3 px: as a video frame it is followed; as a new scene it is detected."""
    a, b = cv2.imread(str(photos / "c.jpg")), cv2.imread(str(photos / "d.jpg"))
    video = ScheduledDetector(detector, detect_every=3)
    video.detect(a, 0)
    video.detect(b, 1)
    assert video.stats.followed == 1
    stills = ScheduledDetector(detector, detect_every=3)
    assert stills.detect(a, 0, new_scene=True) == detector.inner.detect(a)
    assert stills.detect(b, 1, new_scene=True) == detector.inner.detect(b)
    assert stills.stats.full == 2 and stills.stats.followed == 0 and stills.stats.scenes == 2


# -- the tracker --------------------------------------------------------------------------------------------


def frame(image_shape=(480, 640), new_scene=False) -> Frame:
    return Frame(np.zeros((*image_shape, 3), np.uint8), 0, "x.jpg", datetime.now(timezone.utc), new_scene)


def test_tracker_reset_forgets_tracks_smoothing_and_ids():
    tracker = Tracker(TrackerConfig(), LABELS)
    box = [Detection(Box(100, 100, 80, 80), 0.9)]
    angry, happy = np.eye(7)[0], np.eye(7)[3]
    tracker.begin_frame(frame())
    tracker.update(box, [angry])
    tracker.begin_frame(frame())
    (carried,) = tracker.update(box, [happy])
    assert carried.label == "angry" and carried.probs[0] == pytest.approx(0.6)  # smoothing and hysteresis
    tracker.begin_frame(frame(new_scene=True))
    (fresh,) = tracker.update(box, [happy])
    assert (fresh.track_id, fresh.label, fresh.confidence) == (1, "happy", 1.0)
    assert np.array_equal(fresh.probs, happy)


def test_tracker_drops_tracks_but_keeps_counting_ids_when_the_size_changes():
    tracker = Tracker(TrackerConfig(), LABELS)
    box = [Detection(Box(100, 100, 80, 80), 0.9)]
    tracker.begin_frame(frame((480, 640)))
    tracker.update(box, [np.eye(7)[0]])
    tracker.begin_frame(frame((720, 1280)))
    (face,) = tracker.update(box, [np.eye(7)[3]])
    assert (face.track_id, face.label) == (2, "happy")  # a new track, an id not used before in this run


# -- the sources -------------------------------------------------------------------------------------------


def test_image_sources_mark_every_image_a_new_scene(photos, tmp_path):
    with open_source(str(photos)) as source:
        stills = [source.read() for _ in range(len(PHOTOS))]
        assert source.read() is None
    assert [f.source for f in stills] == [name for name, *_ in PHOTOS]
    assert all(f.new_scene for f in stills)
    assert [f.image.shape[1::-1] for f in stills] == [size for _, size, *_ in PHOTOS]
    with open_source("demo", SourceConfig()) as demo:
        assert not any(demo.read().new_scene for _ in range(3))  # a video is one scene


# -- end to end --------------------------------------------------------------------------------------------


def test_a_folder_of_photos_of_three_sizes_runs_to_the_end(photos, tmp_path):
    """The follower crashed on the second size, after the first photo's rows: now every photo has its rows."""
    result = run_device("--source", str(photos), "--csv", str(tmp_path / "folder.csv"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = rows_by_image(tmp_path / "folder.csv")
    assert sorted(rows) == [name for name, *_ in PHOTOS]
    assert all(len(r) == 1 for r in rows.values())  # one face each


@pytest.mark.slow  # nine runs of the device, about 45 s
def test_each_photo_of_a_folder_gets_the_rows_it_gets_alone_in_any_order(photos, tmp_path):
    alone: dict[str, list[tuple]] = {}
    for name, *_ in PHOTOS:
        result = run_device("--source", str(photos / name), "--csv", str(tmp_path / f"{name}.csv"))
        assert result.returncode == 0, result.stderr
        alone.update(rows_by_image(tmp_path / f"{name}.csv"))
    # the same photos in the reverse order: z_a.jpg ... t_g.jpg
    reverse = tmp_path / "reverse"
    reverse.mkdir()
    for i, (name, *_) in enumerate(PHOTOS):
        (reverse / f"{'zyxwvut'[i]}_{name}").write_bytes((photos / name).read_bytes())
    for folder in (photos, reverse):
        log = tmp_path / f"{folder.name}.csv"
        result = run_device("--source", str(folder), "--csv", str(log))
        assert result.returncode == 0, result.stderr
        together = {name.split("_")[-1]: rows for name, rows in rows_by_image(log).items()}
        assert together == alone, folder.name
