"""``--save-faces DIR``: each tracked face's crop as ``DIR/FRAME_trackID.jpg`` (off by default: privacy).

The crops are an extra: a disk that refuses them gets one warning and never stops the CSV log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from device.frames import Face, Frame
from device.manifest import Crop, write_atomic
from device.preprocess import crop_face

log = logging.getLogger(__name__)


class FaceCrops:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._failed = False  # warned once that crops cannot be written

    def save(self, frame: Frame, faces: list[Face], crop: Crop) -> None:
        """Each face cut out as the classifier saw it (``crop``: the model's framing)."""
        for face in faces:
            ok, data = cv2.imencode(".jpg", crop_face(frame.image, face.box, crop))
            if not ok:
                continue
            try:
                write_atomic(self.folder / f"{frame.index:08d}_track{face.track_id}.jpg", data.tobytes())
            except OSError as exc:
                if not self._failed:
                    log.warning("--save-faces %s: cannot write face crops (%s); skipping them", self.folder,
                                exc.strerror or exc)
                self._failed = True
