"""The annotated .mp4: H.264 where OpenCV can write it (browsers play it), else mp4v and a note on playing it."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import cv2
import numpy as np

from device import sinks
from device.config import OutputConfig
from device.frames import Frame
from tests.clips import Clip


def sample_entry(path) -> str:
    """The codec of an MP4's video track, as its sample description box names it ('avc1', 'mp4v')."""
    data = path.read_bytes()
    stsd = data.index(b"stsd")  # then version and flags, the entry count, the entry's size, and its type
    return data[stsd + 16:stsd + 20].decode()


def test_mp4_is_written_in_the_probed_codec_and_decodes(tmp_path, caplog, fer_root):
    clip = Clip(frames=20)
    path = tmp_path / "demo.mp4"
    sink = sinks.open_sink(OutputConfig(target=str(path)), fps=15.0)
    assert sink.fourcc == sinks.mp4_fourcc() in ("avc1", "mp4v")
    with caplog.at_level(logging.INFO, logger="device.sinks"):
        for i in range(clip.frames):
            sink.write(clip.frame(i), Frame(clip.frame(i), i, "clip", datetime.now(timezone.utc)))
        sink.close()
    assert sample_entry(path) == sinks.mp4_fourcc()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    assert len(decoded) == clip.frames
    assert all(np.abs(d.astype(int) - clip.frame(i)).mean() < 8 for i, d in enumerate(decoded))  # lossy, close
    advice = [r.getMessage() for r in caplog.records if "browsers play only H.264" in r.getMessage()]
    if sinks.mp4_fourcc() == "mp4v":  # OpenCV's pip wheels: no H.264 encoder
        assert advice == [f"{path} is MPEG-4 Part 2 ('mp4v'): this OpenCV has no H.264 encoder, and browsers play "
                          f"only H.264; play it with VLC or mpv, or convert it: ffmpeg -i {path} -c:v libx264 "
                          f"-pix_fmt yuv420p -movflags +faststart {tmp_path / 'demo-h264.mp4'}"]
    else:
        assert advice == []


def test_the_probe_leaves_nothing_on_stderr(capfd):
    sinks.mp4_fourcc.cache_clear()
    sinks.mp4_fourcc()
    assert capfd.readouterr().err == ""  # FFmpeg's "Could not open codec" lines stay out of the user's way
