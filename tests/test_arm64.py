"""arm64: the verdict of the emulated check (scripts/arm64_check.py), and one clear error on an Armv8.0 CPU.

The check's real runs are made once on the host (the demo, bench, a folder of real faces, the val/ sample);
a copy of them stands in for the arm64 side, so the summary must pass, and each kind of difference an
emulated Pi could show (another model input, another label, a missing face, a crash) must fail it, naming the
row.  scripts/arm64_check.sh makes the same runs in an emulated Raspberry Pi OS root (see docs/PLATFORMS.md).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import DetectorConfig
from device.detector import FaceDetector
from device.errors import ModelError
from device.native import AT_HWCAP, lacks_arm64_atomics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "arm64_check.py"
FRAMES = 4   # the demo's and bench's
FACES = 20   # the face folder's (the check asks for 90 % of them found)


def python(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def host_work(tmp_path_factory, fer_root, face_models) -> Path:
    """The check's work folder with the host's real runs in host/, as the shell script makes them."""
    work = tmp_path_factory.mktemp("arm64_check")
    runs = [
        (SCRIPT, "prepare", fer_root, ".", "--every", 50, "--frames", FACES),
        ("-m", "device", "run", "--source", "demo", "--max-frames", FRAMES, "--csv", "host/demo.csv"),
        ("-m", "device", "bench", "--source", "demo", "--frames", FRAMES, "--warmup", 2),
        ("-m", "device", "run", "--source", "faces", "--detect-every", 1, "--workers", 1, "--csv", "host/faces.csv"),
        (SCRIPT, "measure", "val", "host/measure.json"),
    ]
    (work / "host").mkdir()
    for args in runs:
        done = python(*args, cwd=work)
        assert done.returncode == 0, done.stderr[-2000:]
        if "bench" in args:
            (work / "host" / "bench.log").write_text(done.stdout)
    return work


def summary(work: Path) -> subprocess.CompletedProcess:
    return python(SCRIPT, "summary", "host", "arm64", "--frames", FRAMES, cwd=work)


def arm64_copy(work: Path) -> Path:
    shutil.rmtree(work / "arm64", ignore_errors=True)
    shutil.copytree(work / "host", work / "arm64")
    return work / "arm64"


def test_prepare_takes_every_nth_face_and_makes_camera_frames(host_work, fer_root):
    for folder in (fer_root / "val").iterdir():
        expected = len(sorted(folder.iterdir())[::50])
        assert len(list((host_work / "val" / folder.name).iterdir())) == expected
    frames = sorted((host_work / "faces").glob("*.png"))
    assert len(frames) == FACES
    import cv2
    assert cv2.imread(str(frames[0])).shape == (480, 640, 3)


def test_the_same_results_pass_with_every_row_checked(host_work):
    arm64_copy(host_work)
    done = summary(host_work)
    assert done.returncode == 0, done.stdout + done.stderr
    measured = json.loads((host_work / "host" / "measure.json").read_text())
    out = done.stdout
    assert f"{2 * FRAMES:>12}  = {2 * FRAMES}" in out  # the demo's rows: every face of every frame
    assert f"{measured['n']}/{measured['n']}" in out
    assert f"{measured['accuracy']:.4f}" in out
    assert len([line for line in out.splitlines() if line.endswith(" ok")]) == 10 and "FAILED" not in out
    assert out.rstrip().endswith("arm64 check: passed (10 of 10 checks)")


def test_one_other_model_input_fails_the_check(host_work):
    arm = arm64_copy(host_work)
    measured = json.loads((arm / "measure.json").read_text())
    measured["inputs"][3] = "0" * 16  # one face resized differently, as plain INTER_LINEAR did on arm64
    (arm / "measure.json").write_text(json.dumps(measured))
    done = summary(host_work)
    assert done.returncode == 1
    assert "FAILED: val sample model inputs identical" in done.stdout
    assert f"{measured['n'] - 1}/{measured['n']}" in done.stdout


def test_other_labels_and_lost_faces_fail_the_check(host_work):
    arm = arm64_copy(host_work)
    with open(arm / "demo.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[: len(rows) // 2]:
        row["label"] = "disgust" if row["label"] != "disgust" else "fear"
    with open(arm / "demo.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])  # and one face lost
    done = summary(host_work)
    assert done.returncode == 1
    failed = done.stdout.rsplit("FAILED: ", 1)[1]
    assert "demo rows" in failed and "demo labels as on the host" in failed


def test_a_run_that_wrote_nothing_is_one_error_line(host_work):
    arm = arm64_copy(host_work)
    (arm / "measure.json").unlink()
    done = summary(host_work)
    assert done.returncode == 1
    assert done.stderr.startswith("error: arm64 check: missing or unreadable results")
    assert "Traceback" not in done.stderr


def pi4_dir(work: Path, demo_log: str) -> Path:
    """The Cortex-A72 runs' folder: a demo log, and the classifier's outputs (the host's, as the A72 gave)."""
    pi4 = work / "pi4"
    shutil.rmtree(pi4, ignore_errors=True)
    pi4.mkdir()
    (pi4 / "demo.log").write_text(demo_log)
    shutil.copy(work / "host" / "measure.json", pi4 / "measure.json")
    return pi4


def test_a_pi4_core_that_stops_with_one_error_line_passes_and_a_bare_crash_fails(host_work):
    arm64_copy(host_work)
    message = "mediapipe 1.2.3 needs an Armv8.1 CPU (LSE atomics) and this one lacks them"
    pi4_dir(host_work, f"error: {message}\n")
    done = python(SCRIPT, "summary", "host", "arm64", "--frames", FRAMES, "--pi4", "pi4", cwd=host_work)
    assert done.returncode == 0, done.stdout
    assert f"Pi 4 core (Cortex-A72, Armv8.0): {message}" in done.stdout
    assert "arm64 check: passed (12 of 12 checks)" in done.stdout
    pi4_dir(host_work, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nIllegal instruction\n")
    done = python(SCRIPT, "summary", "host", "arm64", "--frames", FRAMES, "--pi4", "pi4", cwd=host_work)
    assert done.returncode == 1
    assert "FAILED: Pi 4 core (Cortex-A72): demo" in done.stdout


def auxv(hwcap: int) -> bytes:
    """An arm64 auxiliary vector: AT_PAGESZ, AT_HWCAP, AT_NULL."""
    return struct.pack("<6Q", 6, 4096, AT_HWCAP, hwcap, 0, 0)


def test_armv8_0_is_told_from_armv8_1_by_the_atomics_bit():
    pi4 = 0b1000_1000_0111  # fp asimd evtstrm crc32 cpuid: a Raspberry Pi 4's Features line
    pi5 = pi4 | 1 << 8  # + atomics (a Cortex-A76 has more, none of them looked at)
    assert lacks_arm64_atomics(auxv(pi4))
    assert not lacks_arm64_atomics(auxv(pi5))
    assert not lacks_arm64_atomics(struct.pack("<2Q", 0, 0))  # no HWCAP word: unknown, MediaPipe decides
    assert not lacks_arm64_atomics()  # this machine (x86-64 or an Armv8.1+ arm64)


def test_the_detector_on_an_armv8_0_cpu_is_one_clear_error(monkeypatch, face_models):
    import device.detector as detector

    monkeypatch.setattr(detector, "lacks_arm64_atomics", lambda: True)
    with pytest.raises(ModelError, match=r"^mediapipe \d[\d.]* needs an Armv8\.1 CPU \(LSE atomics\).*Pi 4"):
        FaceDetector(DetectorConfig(models_dir=str(face_models)))


def test_the_classifier_on_an_armv8_0_cpu_skips_the_gpu_probe(monkeypatch):
    import device.runtime as runtime

    monkeypatch.setattr(runtime, "lacks_arm64_atomics", lambda: True)
    model = ROOT / "models" / "emotion_fer2013.tflite"
    assert isinstance(runtime.open_runtime(model, accelerator="auto"), runtime.InterpreterRuntime)
    with pytest.raises(ModelError, match=r"^GPU accelerator unavailable: .* needs an Armv8\.1 CPU \(LSE atomics\)"):
        runtime.open_runtime(model, accelerator="gpu")
