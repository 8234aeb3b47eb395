"""The model input is the same bytes on every CPU (issue 28): digests of to_model_image on real images, pinned.

OpenCV's plain INTER_LINEAR took another path on arm64 and moved 48->64 FER faces by one grey level on a
quarter of the pixels, so the same face gave another input there; INTER_AREA at a fractional factor (96->80)
moved a few.  INTER_LINEAR_EXACT is bit-exact by design, and INTER_AREA at a whole factor is integer arithmetic.
A different digest here means this machine's OpenCV prepares faces differently from the one the model was
measured on.  scripts/arm64_check.sh compares the same kind of digests on an emulated Raspberry Pi.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from device.preprocess import to_model_image
from device.sources import demo_portrait


def sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_a_fer_face_grows_to_the_same_bytes(fer_root):
    face = cv2.imread(str(fer_root / "val" / "happy" / "PublicTest_10130075.jpg"), cv2.IMREAD_GRAYSCALE)
    assert face.shape == (48, 48)
    image = to_model_image(face, 64, "grayscale")
    assert image.shape == (64, 64, 1) and image.dtype == np.uint8
    assert abs(float(image.mean()) - float(face.mean())) < 1.0  # the same face, only larger
    assert sha256(image) == "09d0473adae6c0b90128e75d95494591d372bba4e11a35aabcd2971d7b6bc5a4"


def test_colour_crops_shrink_and_grow_to_the_same_bytes():
    portrait = demo_portrait()  # a real photograph, BGR, as a camera frame gives it
    shrunk = to_model_image(portrait[100:250, 180:330], 64, "grayscale", bgr=True)  # 150 -> 192 -> 64
    grown = to_model_image(portrait[150:190, 230:270], 64, "grayscale", bgr=True)   # 40 px -> 64
    assert sha256(shrunk) == "1d4a93664d6a5f50cd7b6d194aba333b845dcf17423d6cfe924b46a18f4811b6"
    assert sha256(grown) == "a84b5ea3a54e3f0c13ae84b315902c27e041016b9faf9c113ba0c53112f0449a"


@pytest.mark.parametrize("crop, size", [(150, 64), (96, 80), (121, 80), (192, 80), (333, 80), (160, 80)])
def test_a_shrink_is_what_area_averaging_gives(crop, size):
    """The exact two-step shrink stays within a grey level, on average, of OpenCV's INTER_AREA (whose fractional
    path is the one that differs by CPU), and equals it at a whole factor."""
    face = cv2.cvtColor(demo_portrait()[100:100 + crop, 180:180 + crop], cv2.COLOR_BGR2GRAY)
    area = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA).astype(int)
    ours = to_model_image(face, size, "grayscale")[..., 0].astype(int)
    difference = np.abs(ours - area)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 8, (difference.mean(), difference.max())
    if crop % size == 0:
        assert difference.max() == 0
