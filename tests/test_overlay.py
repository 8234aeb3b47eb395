"""The overlay: the label agrees with the bars under it, and the bars cover no other face."""

from __future__ import annotations

import numpy as np

from device.config import OverlayConfig, TrackerConfig
from device.frames import Box, Detection, Face
from device.overlay import bars_box, color_for, draw
from device.tracker import Tracker

LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
ANGRY, NEUTRAL = LABELS.index("angry"), LABELS.index("neutral")


def probs(**given: float) -> np.ndarray:
    """Class probabilities: the ones given, the rest shared evenly."""
    p = np.zeros(len(LABELS), np.float32)
    for label, value in given.items():
        p[LABELS.index(label)] = value
    rest = [i for i, label in enumerate(LABELS) if label not in given]
    p[rest] = (1 - sum(given.values())) / len(rest)
    return p


def test_the_label_is_the_top_class_of_the_probabilities_shown_with_it():
    """The report's case: "angry 35 %" over a neutral bar of 0.40.  Smoothed probabilities in which neutral leads
    angry by less than the hysteresis margin keep the label angry; what is shown with it stays the estimate that
    chose angry until neutral leads by more than the margin, and then both change together."""
    tracker = Tracker(TrackerConfig(smoothing=0.6, hysteresis=0.1), LABELS)
    box = [Detection(Box(100, 100, 120, 120), 0.9)]
    sequence = [probs(angry=0.6, neutral=0.2)] + [probs(angry=0.3, neutral=0.5)] * 6
    faces = [tracker.update(box, [p])[0] for p in sequence]
    for face in faces:
        assert face.label == LABELS[int(face.shown.argmax())]
        assert face.confidence == float(face.probs[LABELS.index(face.label)])  # the CSV's: smoothed, as before
    assert [face.label for face in faces] == ["angry"] * 4 + ["neutral"] * 3
    # smoothed angry / neutral: 0.48 / 0.32, 0.408 / 0.392, then 0.365 / 0.435 (neutral ahead by less than the
    # margin: the label stays, and so does frame 2's estimate on show), then 0.339 / 0.461 (ahead by more)
    np.testing.assert_allclose(faces[3].probs[[ANGRY, NEUTRAL]], [0.3648, 0.4352], atol=1e-4)  # the report's case
    np.testing.assert_allclose(faces[3].shown, faces[2].shown)
    np.testing.assert_allclose(faces[2].shown[[ANGRY, NEUTRAL]], [0.408, 0.392], atol=1e-6)
    np.testing.assert_allclose(faces[4].shown, faces[4].probs)  # switched: the smoothed probabilities again


def bar_lengths(image: np.ndarray, place: Box, labels=LABELS) -> list[int]:
    """Pixels of each class's bar colour along the top line of its row."""
    row = place.h // len(labels)
    return [int(np.all(image[place.y + i * row + 1, place.x:place.x + place.w] == color_for(label), axis=1).sum())
            for i, label in enumerate(labels)]


def test_bars_show_the_probabilities_of_the_label():
    image = np.zeros((480, 640, 3), np.uint8)
    p = probs(angry=0.3, neutral=0.5)
    face = Face(1, Box(100, 100, 120, 120), 0.9, probs(angry=0.45, neutral=0.4), "neutral", 0.4, p)
    draw(image, [face], LABELS, OverlayConfig(bars=True, stats=False))
    place = bars_box(face.box, [], len(LABELS), image.shape, max(0.4, 480 / 900))
    assert place is not None and place.x == 100 + 120 + 6  # right of the face
    lengths = bar_lengths(image, place)
    assert lengths == [int(place.w * float(v)) + 1 for v in p]  # face.shown; cv2.rectangle includes both ends
    assert int(np.argmax(lengths)) == NEUTRAL


def test_bars_are_never_drawn_over_another_face():
    """Two faces side by side: the left one's bars would go right, over its neighbour; they go left instead, and
    where neither side has room (a face at the left edge), below."""
    scale = max(0.4, 480 / 900)
    p = probs(happy=0.7)
    left, right = Face(1, Box(200, 150, 120, 120), 0.9, p, "happy", 0.7), Face(2, Box(340, 150, 120, 120), 0.9, p,
                                                                             "happy", 0.7)
    image = np.zeros((480, 640, 3), np.uint8)
    draw(image, [left, right], LABELS, OverlayConfig(bars=True, stats=False))
    inner = image[right.box.y + 3:right.box.y + right.box.h - 2, right.box.x + 3:right.box.x + right.box.w - 2]
    assert not inner.any()  # nothing drawn inside the right face
    inner = image[left.box.y + 3:left.box.y + left.box.h - 2, left.box.x + 3:left.box.x + left.box.w - 2]
    assert not inner.any()
    place = bars_box(left.box, [right.box], len(LABELS), image.shape, scale)
    assert place.x + place.w < left.box.x  # left of its face
    assert bar_lengths(image, place)[LABELS.index("happy")] == int(place.w * 0.7) + 1

    edge = Box(0, 100, 120, 120)
    below = bars_box(edge, [Box(126, 100, 120, 120)], len(LABELS), image.shape, scale)
    assert below is not None and below.y >= edge.y + edge.h and below.x == 0
    # boxed in: no bars at all rather than bars over a face
    assert bars_box(edge, [Box(126, 100, 120, 120), Box(0, 226, 120, 120)], len(LABELS), image.shape,
                    scale) is None


def test_on_the_demo_the_label_is_always_the_longest_bar(face_models):
    """The report's count: 22 of the demo's 600 faces showed a label over a longer bar of another class.  The
    demo's faces through the real detector, classifier and tracker: the hysteresis band does occur (the label is
    not the top smoothed class), and on every face the label is the top class of what is drawn."""
    from device.config import ClassifierConfig, Config, LogConfig, OutputConfig, SourceConfig
    from device.pipeline import Pipeline

    # The FER2013 model, whose labels the report saw flip on the demo (the default FER+ model's labels never
    # sat inside the hysteresis band on the demo's 600 faces).
    config = Config(source=SourceConfig(uri="demo"), output=OutputConfig(target="none"), log=LogConfig(csv=None),
                    classifier=ClassifierConfig(model="fer2013"))
    pipeline = Pipeline(config)
    faces = []
    try:
        while (result := pipeline.step()) is not None:
            faces.extend(result.faces)
    finally:
        pipeline.close()
    labels = pipeline.classifier.labels
    assert len(faces) == 600
    in_band = [f for f in faces if f.label != labels[int(f.probs.argmax())]]
    assert in_band  # the case the report saw: the label held while another class leads by less than the margin
    assert all(f.label == labels[int(f.shown.argmax())] for f in faces)
    face = in_band[0]
    image = np.zeros((480, 640, 3), np.uint8)
    draw(image, [face], labels, OverlayConfig(bars=True, stats=False))
    place = bars_box(face.box, [], len(labels), image.shape, max(0.4, 480 / 900))
    lengths = bar_lengths(image, place, labels)
    assert lengths[labels.index(face.label)] == max(lengths), lengths  # no other bar is longer (a pixel tie can be)
