"""The model input is the same bytes on every CPU (issue 28): digests of to_model_image on real images, pinned.

OpenCV's plain INTER_LINEAR took another path on arm64 and moved 48->64 FER faces by one grey level on a
quarter of the pixels, so the same face gave another input there; INTER_LINEAR_EXACT is bit-exact by design.
A different digest here means this machine's OpenCV prepares faces differently from the one the model was
measured on.  scripts/arm64_check.sh compares the same kind of digests on an emulated Raspberry Pi.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

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
    shrunk = to_model_image(portrait[100:250, 180:330], 64, "grayscale", bgr=True)  # 150 px -> 64: INTER_AREA
    grown = to_model_image(portrait[150:190, 230:270], 64, "grayscale", bgr=True)   # 40 px -> 64
    assert sha256(shrunk) == "d3706a72cf611763bad0322e0005e00d2fc2b568fab1b17cf528d55b255bfe87"
    assert sha256(grown) == "a84b5ea3a54e3f0c13ae84b315902c27e041016b9faf9c113ba0c53112f0449a"
