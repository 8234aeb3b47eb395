"""What a bare machine lacks, said in one line: MediaPipe's system libraries, the tools' [train] extra, a camera.

Each case runs the real command line in a subprocess, with the missing piece taken away first (a loader that
fails as dlopen does, modules hidden as on a [device]-only install, an empty /dev).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time

import pytest

from device.native import missing_library_message
from device.sources import is_camera
from tests.conftest import ROOT

DLOPEN_ERROR = "libEGL.so.1: cannot open shared object file: No such file or directory"
# Python run before the command: MediaPipe's native library fails to load as on a bare Debian or Pi OS image.
NO_EGL = f'''
import ctypes
class CDLL(ctypes.CDLL):
    def __init__(self, name, *args, **kwargs):
        if str(name).endswith("libmediapipe.so"):
            raise OSError({DLOPEN_ERROR!r})
        super().__init__(name, *args, **kwargs)
ctypes.CDLL = CDLL
'''
TRAIN_ONLY = ("sklearn", "tensorflow", "keras", "keras_tuner", "tensorboard")
HIDE_TRAIN = f"import sys\nfor name in {TRAIN_ONLY!r}:\n    sys.modules[name] = None  # import fails: not installed\n"


def python(prelude: str, module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` with ``prelude`` run first in the same interpreter."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = [{module!r}, *{list(args)!r}]\n" \
           f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# -- MediaPipe's system libraries ----------------------------------------------------------------------------


def test_missing_egl_is_one_line_naming_the_packages(tmp_path, face_models):
    result = python(NO_EGL, "device", "run", "--source", "demo", "--max-frames", "2", "--csv", str(tmp_path / "x.csv"))
    assert result.returncode == 78, result.stderr
    assert errors(result) == ["error: MediaPipe's native library cannot load: libEGL.so.1 is missing; install the "
                              "system libraries it needs: sudo apt install libegl1 libgles2"]
    assert not (tmp_path / "x.csv").exists()


def test_missing_library_messages():
    gles = ImportError("libGLESv2.so.2: cannot open shared object file: No such file or directory")
    assert missing_library_message("MediaPipe's native library", gles).endswith("sudo apt install libegl1 libgles2")
    other = OSError("libfoo.so.3: cannot open shared object file: No such file or directory")
    assert missing_library_message("X", other) == ("X cannot load: the system library libfoo.so.3 is missing; "
                                                   "install the package that provides it")
    assert missing_library_message("X", OSError("libmediapipe.so: wrong ELF class: ELFCLASS32")) is None


# -- the tools' [train] extra ---------------------------------------------------------------------------------


def test_train_help_works_without_the_train_extra_and_names_it():
    result = python(HIDE_TRAIN, "training", "--help")
    assert result.returncode == 0, result.stderr
    assert "pip install 'edge-emotion[train]'" in result.stdout


def test_train_without_its_extra_is_one_line(tmp_path):
    result = python(HIDE_TRAIN, "training", "fit", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 78
    (line,) = errors(result)
    assert line.endswith("is not installed (no module named 'keras'): install edge-emotion[train], "
                         "e.g. pip install 'edge-emotion[train]'")


def test_convert_evaluate_without_scikit_learn_is_one_line(tmp_path):
    result = python(HIDE_TRAIN, "convert", "evaluate", "--model", str(ROOT / "models/emotion_fer2013.tflite"),
                    "--data", str(tmp_path))
    assert result.returncode == 78
    assert errors(result) == ["error: scikit-learn is not installed (no module named 'sklearn'): install "
                              "edge-emotion[train], e.g. pip install 'edge-emotion[train]'"]


# -- no camera ------------------------------------------------------------------------------------------------


def test_no_camera_at_all_is_said_at_once(tmp_path):
    """No --source on a machine with no camera: it retried for no_frame_timeout (31 s) before its error."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "null").touch()
    prelude = (f"import sys\nfrom pathlib import Path\nimport device.sources\ndevice.sources.DEV = Path({str(dev)!r})\n"
               "sys.modules['picamera2'] = None  # no libcamera camera either\n")
    started = time.monotonic()
    result = python(prelude, "device", "run", "--csv", str(tmp_path / "x.csv"))
    elapsed = time.monotonic() - started
    assert result.returncode == 66, result.stderr
    assert errors(result) == [f"error: no camera found: no camera device in {dev} (video*) and no libcamera "
                              "camera; plug one in, or choose a source with --source (e.g. --source demo, "
                              "--source video.mp4, --source rtsp://...)"]
    assert "retrying" not in result.stderr
    assert elapsed < 25  # the models load; nothing waits
    assert not (tmp_path / "x.csv").exists()


def capability(driver: str, caps: int) -> bytes:
    """A struct v4l2_capability as VIDIOC_QUERYCAP fills it (driver, card, bus_info, version, capabilities,
    device_caps, reserved)."""
    return struct.pack("<16s32s32sIII12x", driver.encode(), b"card", b"bus", 0x60100, caps | 0x80000000, caps)


@pytest.mark.parametrize("driver, caps, camera", [
    ("uvcvideo", 0x04200001, True),  # a USB webcam: capture, streaming, ext pix format
    ("uvcvideo", 0x04a00000, False),  # its metadata node
    ("unicam", 0x04200001, True),
    ("bcm2835-codec", 0x04208000, False),  # memory-to-memory: a codec
    ("bcm2835-isp", 0x04200001, False),  # the Pi's ISP, present without any camera
    ("pispbe", 0x04201000, False),
])
def test_which_video_nodes_are_cameras(driver, caps, camera):
    assert is_camera(capability(driver, caps)) is camera
