"""Files play at their own frame rate when a person watches (device.pacing); otherwise as fast as possible."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from device import config as cfgmod
from device.pacing import Paced, pace, watched
from device.sources import open_source

from .conftest import ROOT


@pytest.mark.parametrize("overrides, expected", [
    ({}, False),
    ({"output": {"target": "display"}}, True),
    ({"output": {"target": "drm"}}, True),
    ({"web": {"serve": "127.0.0.1:0"}}, True),
    ({"source": {"realtime": True}}, True),
    ({"output": {"target": "runs/x.mp4"}}, False),
])
def test_who_watches(overrides, expected):
    assert watched(cfgmod.load(None, overrides)) is expected


def test_the_demo_is_paced_at_30_fps_only_when_watched():
    fast = cfgmod.load(None, {"source": {"uri": "demo"}})
    source = open_source("demo", fast.source)
    assert pace(source, fast) is source  # nobody watches: as fast as possible
    watched_cfg = cfgmod.load(None, {"source": {"uri": "demo", "realtime": True}})
    paced = pace(open_source("demo", watched_cfg.source), watched_cfg)
    assert isinstance(paced, Paced) and paced.rate == 30.0
    started = time.monotonic()
    frames = [paced.read() for _ in range(16)]
    elapsed = time.monotonic() - started
    assert [f.index for f in frames] == list(range(16)) and paced.index == 16
    assert elapsed >= 15 / 30 - 0.01  # 16 frames span 15 intervals of 1/30 s
    paced.close()


def test_a_camera_is_never_paced():
    class Camera:
        live, rate = True, None

    config = cfgmod.load(None, {"source": {"realtime": True}})
    camera = Camera()
    assert pace(camera, config) is camera


def test_realtime_run_of_the_demo_takes_its_own_time(face_models):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "device", "run", "--source", "demo", "--realtime",
                             "--max-frames", "45"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 44 / 30
    rate = float(re.search(r"([\d.]+) fps processing", result.stdout).group(1))
    assert rate <= 31  # the demo's own 30 fps, not the machine's speed
