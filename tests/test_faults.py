"""Fault injection (issue 15): full disks, file-size limits, models rewritten under a running process,
corrupt models, unwritable paths, foreign CSVs, cameras that never answer, early signals, truncated
sources.  Under every fault: no row lost silently, no traceback, no native crash, a stop within 2 s.

End-to-end cases run ``python -m device run`` in a subprocess, as systemd would.  The full-disk
cases mount a 200 KB tmpfs (root); they are skipped, with the reason, where ``mount`` is refused.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import csvlog, pipeline as pipeline_mod
from device.config import ClassifierConfig, Config, DetectorConfig, LogConfig, RunConfig, SourceConfig
from device.csvlog import CsvLog, columns
from device.errors import ConfigError, SourceError, WriteError
from device.frames import Box, Face, Frame
from tests.test_service import FullDisk

ROOT = Path(__file__).resolve().parents[1]
FACE_DIR = ROOT / "models"
SHIPPED = ROOT / "models" / "emotion_fer2013.tflite"
LABELS = ("angry", "happy", "neutral")


# -- helpers --------------------------------------------------------------------------------------------
class Daemon:
    """``python -m device run`` in a subprocess; stderr is collected by a thread so it can be waited on."""

    def __init__(self, *args: str, preexec_fn=None):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "device", "run", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> int:
        """Waits for a stderr line matching ``pattern`` (from line ``after`` on); returns the line count then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines[after:]):
                return len(self.lines)
            if self.proc.poll() is not None:
                self._reader.join(2)
                if any(re.search(pattern, line) for line in self.lines[after:]):
                    return len(self.lines)
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.stderr[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[str, float]:
        """Sends ``sig``; returns stdout and the seconds until the process ended."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return self.finish(timeout, sent)

    def finish(self, timeout: float = 240, since: float | None = None) -> tuple[str, float]:
        since = time.monotonic() if since is None else since
        try:
            stdout = self.proc.stdout.read() if self._wait(timeout) else ""
        finally:
            self.proc.kill()
        took = time.monotonic() - since
        self._reader.join(5)
        return stdout, took

    def _wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


def run_device(*args: str, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_one_error_line(result_stderr: str, *needles: str) -> str:
    assert "Traceback" not in result_stderr, result_stderr[-3000:]
    errors = [line for line in result_stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result_stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def summary(stdout: str) -> dict[str, int]:
    match = re.search(r"done: (\d+) frames, (\d+) faces.*?, (\d+) CSV rows", stdout)
    assert match, stdout
    return {"frames": int(match.group(1)), "faces": int(match.group(2)), "rows": int(match.group(3))}


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(None not in r and None not in r.values() for r in rows), f"{path}: a malformed row"
    return rows


def with_manifest(model: Path, data: bytes, manifest_from: Path, sha256: str | None) -> Path:
    """``data`` as ``model`` with ``manifest_from``'s manifest beside it, sha256 replaced (None: removed)."""
    model.write_bytes(data)
    manifest = json.loads(manifest_from.with_suffix(".json").read_text())
    manifest.pop("model_sha256", None)
    if sha256 is not None:
        manifest["model_sha256"] = sha256
    model.with_suffix(".json").write_text(json.dumps(manifest))
    return model


# -- a small tmpfs (root) ---------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """A 200 KB tmpfs mounted in tmp; skipped where mounting is refused (not root, no CAP_SYS_ADMIN)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("mount/umount not installed")
    point = tmp_path / "small"
    point.mkdir()
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(point)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run([umount, "-l", str(point)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` up, then give back ``leave`` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


# -- 1. a full disk at stop, at start, and a file-size limit ------------------------------------------------
def test_sigterm_on_a_full_disk_counts_what_is_lost_and_exits_74(tmpfs, tflite_model, face_models):
    fill(tmpfs, leave=8192)
    out = tmpfs / "rows.csv"
    daemon = Daemon("--source", "demo", "--loop", "--model", str(tflite_model), "--face-models", str(face_models),
                    "--csv", str(out))  # the default 5 s flush budget (the unit's TimeoutStopSec is 10 s)
    try:
        daemon.wait_for(r"CSV log: disk full \(ENOSPC\)", 120)
        time.sleep(0.5)  # a few more rows held in memory
        stdout, took = daemon.stop()
    finally:
        daemon.proc.kill()
    assert daemon.proc.returncode == 74, daemon.stderr[-3000:]
    assert took < 5 + 2, f"stop took {took:.2f} s with a 5 s flush budget"
    line = assert_one_error_line(daemon.stderr, "CSV rows could not be written", str(out), "disk full")
    lost = int(re.search(r"error: (\d+) CSV rows", line).group(1))
    counts = summary(stdout)
    on_disk = csv_rows(out)
    assert counts["rows"] == len(on_disk)  # the summary counts only the rows on disk
    assert lost > 0 and len(on_disk) + lost == counts["faces"]  # every row accounted for


def test_rows_held_at_stop_are_written_when_space_returns_within_the_budget(tmp_path, monkeypatch):
    disk = FullDisk()
    monkeypatch.setattr(csvlog, "os", disk)
    path = tmp_path / "log.csv"
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    disk.full = True
    write_frames(log, 0, 5)
    assert log.backlog == 10 and log.rows_written == 0
    threading.Timer(0.3, lambda: setattr(disk, "full", False)).start()  # space comes back during the stop
    started = time.monotonic()
    log.close(timeout=3)
    assert time.monotonic() - started < 2
    assert len(csv_rows(path)) == 10 and log.rows_written == 10 and log.rows_lost == 0


def test_full_disk_at_start_is_reported_as_such_and_the_header_is_not_a_row(tmpfs, tflite_model, face_models):
    fill(tmpfs, leave=0)
    out = tmpfs / "rows.csv"
    result = run_device("run", "--source", "demo", "--max-frames", "3", "--model", str(tflite_model),
                        "--face-models", str(face_models), "--csv", str(out))
    assert result.returncode == 74, result.stderr[-3000:]
    assert "CSV log: disk full (ENOSPC)" in result.stderr
    assert_one_error_line(result.stderr, "error: 6 CSV rows could not be written")  # 3 frames x 2 faces, no header
    assert summary(result.stdout)["rows"] == 0


def test_file_size_limit_is_reported_not_killed_by_sigxfsz(tmp_path, tflite_model, face_models):
    limit = 4096

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "rows.csv"
    daemon = Daemon("--source", "demo", "--max-frames", "30", "--model", str(tflite_model), "--face-models",
                    str(face_models), "--csv", str(out), preexec_fn=limit_file_size)
    stdout, _ = daemon.finish()
    assert daemon.proc.returncode == 74, (daemon.proc.returncode, daemon.stderr[-3000:])
    assert "file-size limit reached (EFBIG)" in daemon.stderr
    line = assert_one_error_line(daemon.stderr, "CSV rows could not be written", "file-size limit")
    lost = int(re.search(r"error: (\d+) CSV rows", line).group(1))
    on_disk = csv_rows(out)
    assert out.stat().st_size <= limit and summary(stdout)["rows"] == len(on_disk)
    assert len(on_disk) + lost == 60


# -- 2. a model copied over the running one -----------------------------------------------------------------
def test_model_copied_over_the_running_one_takes_effect_at_sighup(tmp_path, tflite_model, face_models):
    if not SHIPPED.is_file():
        pytest.skip("the shipped model is missing")
    model = tmp_path / "emotion.tflite"
    for src in (SHIPPED, SHIPPED.with_suffix(".json")):
        shutil.copy(src, model.with_suffix(src.suffix))
    daemon = Daemon("--source", "demo", "--loop", "--model", str(model), "--face-models", str(face_models),
                    "--csv", str(tmp_path / "rows.csv"), "--stats-interval", "1")
    try:
        daemon.wait_for(r"fps \d", 120)  # frames flow
        # The documented update step: cp over the running file (a smaller model: pages of the old one vanish).
        subprocess.run(["cp", str(tflite_model), str(model)], check=True)
        subprocess.run(["cp", str(tflite_model.with_suffix(".json")), str(model.with_suffix(".json"))], check=True)
        mark = daemon.wait_for(r"fps \d", 20, after=len(daemon.lines))  # still running on the old model
        assert daemon.proc.poll() is None
        new_sha = hashlib.sha256(tflite_model.read_bytes()).hexdigest()[:12]
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(rf"emotion model .*sha256 {new_sha}", 30, after=mark)
        daemon.wait_for(r"reloaded: model", 30, after=mark)
        daemon.wait_for(r"fps \d", 20, after=len(daemon.lines))
        stdout, took = daemon.stop()
    finally:
        daemon.proc.kill()
    assert daemon.proc.returncode == 0, daemon.stderr[-3000:]
    assert took < 2
    counts = summary(stdout)
    assert counts["rows"] == counts["faces"] == len(csv_rows(tmp_path / "rows.csv"))


# -- 3. truncated models: a manifest without sha256, and no crash in an accelerator's loader ----------------
def test_truncated_model_without_sha256_is_refused_with_one_line(tmp_path, face_models):
    data = SHIPPED.read_bytes()
    model = with_manifest(tmp_path / "cut.tflite", data[:len(data) // 10], SHIPPED, sha256=None)
    result = run_device("run", "--source", "demo", "--max-frames", "2", "--model", str(model), "--face-models",
                        str(face_models), "--accelerator", "auto")
    assert result.returncode == 78, (result.returncode, result.stderr[-2000:])
    assert_one_error_line(result.stderr, "has no model_sha256", "python -m convert quantize")


def test_truncated_model_is_verified_on_the_cpu_before_any_accelerator(tmp_path, face_models):
    data = SHIPPED.read_bytes()[:100_000]
    model = with_manifest(tmp_path / "cut.tflite", data, SHIPPED, sha256=hashlib.sha256(data).hexdigest())
    result = run_device("run", "--source", "demo", "--max-frames", "2", "--model", str(model), "--face-models",
                        str(face_models), "--accelerator", "auto")
    assert result.returncode == 78, (result.returncode, result.stderr[-2000:])  # 139 was a segfault
    assert_one_error_line(result.stderr, "cannot load", "not a valid Flatbuffer")


def test_truncated_model_at_sighup_keeps_the_running_one(tmp_path, tflite_model, face_models):
    model = tmp_path / "emotion.tflite"
    for src in (tflite_model, tflite_model.with_suffix(".json")):
        shutil.copy(src, model.with_suffix(src.suffix))
    daemon = Daemon("--source", "demo", "--loop", "--model", str(model), "--face-models", str(face_models),
                    "--stats-interval", "1")
    try:
        daemon.wait_for(r"fps \d", 120)
        data = SHIPPED.read_bytes()[:100_000]
        tmp = tmp_path / "staging.tflite"
        with_manifest(tmp, data, SHIPPED, sha256=hashlib.sha256(data).hexdigest())
        os.replace(tmp.with_suffix(".json"), model.with_suffix(".json"))
        os.replace(tmp, model)
        mark = len(daemon.lines)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(r"reload failed; still running the previous config and model: cannot load", 30, after=mark)
        daemon.wait_for(r"fps \d", 20, after=len(daemon.lines))  # frames still flow
        _, took = daemon.stop()
    finally:
        daemon.proc.kill()
    assert daemon.proc.returncode == 0, daemon.stderr[-3000:]
    assert "Traceback" not in daemon.stderr


# -- 4. unwritable output paths: exit 73 before the camera opens; close() closes everything -------------------
@pytest.mark.parametrize("flag,leaf", [("--csv", "rows.csv"), ("--output", "annotated.mp4"),
                                       ("--output", "annotated/"), ("--save-faces", "faces")])
def test_unwritable_output_path_exits_73_before_the_camera_opens(tmp_path, tflite_model, face_models, flag, leaf):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = f"{blocker}/{leaf}"
    # The source does not exist: had it been opened first, this would be exit 66.
    result = run_device("run", "--source", str(tmp_path / "missing.mp4"), "--model", str(tflite_model),
                        "--face-models", str(face_models), flag, target)
    assert result.returncode == 73, (result.returncode, result.stderr[-2000:])
    assert_one_error_line(result.stderr, flag, str(blocker), "not a folder")
    assert blocker.read_text() == "not a folder"


def test_csv_on_a_read_only_filesystem_exits_73(tmpfs, tflite_model, face_models):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = run_device("run", "--source", "demo", "--max-frames", "1", "--model", str(tflite_model),
                        "--face-models", str(face_models), "--csv", str(tmpfs / "rows.csv"))
    assert result.returncode == 73, (result.returncode, result.stderr[-2000:])
    assert_one_error_line(result.stderr, "--csv", "Read-only file system")


def test_close_runs_every_closer_even_when_one_fails():
    closed = []

    class Part:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def close(self):
            closed.append(self.name)
            if self.fails:
                raise OSError(errno.EIO, "Input/output error")

    pipe = pipeline_mod.Pipeline.__new__(pipeline_mod.Pipeline)
    pipe._runner, pipe.progress, pipe.results = None, None, None
    pipe.sink, pipe.source, pipe.detector, pipe.csv = Part("sink", fails=True), Part("source"), Part("detector"), \
        Part("csv")
    with pytest.raises(WriteError, match="Input/output error") as info:
        pipe.close()
    assert closed == ["sink", "source", "detector", "csv"] and info.value.exit_code == 74


# -- 5. a CSV that is not ours is never emptied ---------------------------------------------------------------
@pytest.mark.parametrize("content", [b"my notes, no newline", b"\0\0\0garbage"])  # no whole line: was emptied
def test_a_file_that_is_not_this_csv_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "notes.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not this program's CSV"):
        CsvLog(LogConfig(csv=str(path)), LABELS)
    assert path.read_bytes() == content


def test_foreign_csv_via_the_cli_is_one_line_and_untouched(tmp_path, tflite_model, face_models):
    path = tmp_path / "notes.csv"
    path.write_bytes(b"my notes, no newline")
    result = run_device("run", "--source", "demo", "--max-frames", "1", "--model", str(tflite_model),
                        "--face-models", str(face_models), "--csv", str(path))
    assert result.returncode == 78, result.stderr[-2000:]
    assert_one_error_line(result.stderr, str(path), "not this program's CSV")
    assert path.read_bytes() == b"my notes, no newline"


# -- 6. a network camera that accepts and never answers ------------------------------------------------------
class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_camera_that_accepts_and_never_answers_stops_within_2s(scheme, tflite_model, face_models):
    server = SilentServer()
    daemon = Daemon("--source", f"{scheme}://127.0.0.1:{server.port}/stream", "--model", str(tflite_model),
                    "--face-models", str(face_models))
    try:
        assert server.accepted.wait(120), daemon.stderr[-2000:]
        time.sleep(0.5)  # inside the open, waiting for an answer
        _, took = daemon.stop(timeout=10)
    finally:
        daemon.proc.kill()
        server.close()
    assert took < 2.0, f"SIGTERM to exit: {took:.2f} s"
    assert daemon.proc.returncode == 0, daemon.stderr[-3000:]
    assert "Traceback" not in daemon.stderr


# -- 7. the reconnect deadline ------------------------------------------------------------------------------
def test_reconnect_gives_up_within_1s_of_the_deadline(tflite_model, face_models, monkeypatch):
    attempts: list[float] = []

    def fake_open(uri, cfg=None, stop=None):
        attempts.append(time.monotonic())
        raise SourceError("cannot open /dev/video7")

    monkeypatch.setattr(pipeline_mod, "open_source", fake_open)
    config = Config(source=SourceConfig(uri="/dev/video7"), classifier=ClassifierConfig(model=str(tflite_model)),
                    detector=DetectorConfig(models_dir=str(face_models)),
                    run=RunConfig(no_frame_timeout=2.0, reconnect_max_delay=10.0))
    with pytest.raises(SourceError, match="no frames for 2 s"):
        pipeline_mod.Pipeline(config)
    gave_up = time.monotonic() - attempts[0]
    assert 2.0 <= gave_up < 3.0, f"gave up {gave_up:.2f} s after the first failure, with a 2 s timeout"


# -- 8. a signal in the first moments --------------------------------------------------------------------------
def _caught(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def test_signal_handlers_come_before_the_heavy_imports(tflite_model, face_models):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    daemon = Daemon("--source", "demo", "--loop", "--model", str(tflite_model), "--face-models", str(face_models))
    try:
        deadline = time.monotonic() + 60
        while not _caught(daemon.proc.pid) & (1 << (signal.SIGTERM - 1)):
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.stderr[-2000:]
            time.sleep(0.001)
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        _, took = daemon.stop()  # at once: the handler is there, the model is not loaded yet
    finally:
        daemon.proc.kill()
    assert not re.search(r"cv2|numpy|mediapipe", maps), "SIGTERM handler installed after the heavy imports"
    assert daemon.proc.returncode == 0, daemon.stderr[-3000:]
    assert took < 2.0 and "Traceback" not in daemon.stderr


# -- 9 and 12. photo mode: an unreadable last image is counted; outputs are named after their sources ----------
@pytest.fixture(scope="module")
def photo_run(tmp_path_factory, tflite_model):
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    images = folder / "in"
    images.mkdir()
    cv2.imwrite(str(images / "a_astronaut.tiff"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(images / "b_blank.png"), np.full((200, 200, 3), 128, np.uint8))
    (images / "z_corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")  # sorts last
    out = folder / "out"
    result = run_device("run", "--source", str(images), "--model", str(tflite_model), "--face-models",
                        str(FACE_DIR), "--csv", str(folder / "photos.csv"), "--output", f"{out}/")
    assert result.returncode == 0, result.stderr[-2000:]
    return result, out, folder / "photos.csv"


def test_unreadable_image_that_sorts_last_is_counted(photo_run, face_models):
    result, _, _ = photo_run
    assert "done: 2 frames" in result.stdout and "1 unreadable frames skipped" in result.stdout, result.stdout


def test_photo_mode_names_tiff_outputs_after_their_sources(photo_run, face_models):
    _, out, csv_path = photo_run
    assert sorted(p.name for p in out.iterdir()) == ["a_astronaut.tiff", "b_blank.png"]
    assert cv2.imread(str(out / "a_astronaut.tiff")).shape == (512, 512, 3)
    assert [r["source"] for r in csv_rows(csv_path)] == ["a_astronaut.tiff"]


# -- 10 and 11. truncated videos; a failing source leaves no CSV --------------------------------------------
def write_clip(path: Path, frames: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (160, 120))
    for i in range(frames):
        image = np.full((120, 160, 3), (i * 8) % 256, np.uint8)
        cv2.putText(image, str(i), (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(image)
    writer.release()
    return path


def test_truncated_video_says_it_ended_early_and_exits_66(tmp_path, tflite_model, face_models):
    whole = write_clip(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    common = ("--model", str(tflite_model), "--face-models", str(face_models))
    result = run_device("run", "--source", str(whole), *common)
    assert result.returncode == 0 and "ended early" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert "done: 30 frames" in result.stdout
    result = run_device("run", "--source", str(cut), "--csv", str(tmp_path / "cut.csv"), *common)
    assert result.returncode == 66, (result.returncode, result.stderr[-2000:])
    read = int(re.search(r"done: (\d+) frames", result.stdout).group(1))
    assert 0 < read < 30 and f"source ended early: {read} of 30 frames" in result.stdout
    assert_one_error_line(result.stderr, f"source ended early: {read} of 30 frames")


def test_a_run_that_fails_on_its_source_leaves_no_csv(tmp_path, tflite_model, face_models):
    out = tmp_path / "rows.csv"
    result = run_device("run", "--source", str(tmp_path / "missing.mp4"), "--model", str(tflite_model),
                        "--face-models", str(face_models), "--csv", str(out))
    assert result.returncode == 66, result.stderr[-2000:]
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- 13. the run column ------------------------------------------------------------------------------------
def frame(index: int) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), index, "cam", datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))


def faces(n: int = 2) -> list[Face]:
    return [Face(i + 1, Box(10 * i, 5, 20, 20), 0.9, np.array([0.2, 0.5, 0.3]), "happy", 0.5) for i in range(n)]


def write_frames(log: CsvLog, first: int, count: int) -> None:
    for i in range(first, first + count):
        log.write(frame(i), faces())


def test_appended_runs_are_told_apart_by_the_run_column(tmp_path):
    path = tmp_path / "log.csv"
    starts = [datetime(2030, 1, 1, 8, 0, tzinfo=timezone.utc), datetime(2030, 1, 1, 9, 30, 15, 250000,
                                                                         tzinfo=timezone.utc)]
    for start in starts:
        log = CsvLog(LogConfig(csv=str(path)), LABELS, start)
        write_frames(log, 0, 2)  # frame numbers and track ids restart
        log.close()
    assert columns(LABELS)[:3] == ["timestamp", "run", "frame"]
    rows = csv_rows(path)
    assert [r["run"] for r in rows] == ["2030-01-01T08:00:00.000Z"] * 4 + ["2030-01-01T09:30:15.250Z"] * 4
    assert [int(r["frame"]) for r in rows] == [0, 0, 1, 1] * 2


def test_a_csv_from_before_the_run_column_is_refused_untouched(tmp_path):
    path = tmp_path / "old.csv"
    old_header = ",".join(c for c in columns(LABELS) if c != "run")
    content = old_header + "\n2024-05-01T12:00:00.000Z,0,cam,1,0,5,20,20,happy,0.5,0.2,0.5,0.3\n"
    path.write_text(content)
    with pytest.raises(ConfigError, match="older version \\(no run column\\)"):
        CsvLog(LogConfig(csv=str(path)), LABELS)
    assert path.read_text() == content


# -- 14. the header is not a row ------------------------------------------------------------------------------
def test_rows_held_do_not_count_the_header(tmp_path, monkeypatch):
    disk = FullDisk()
    disk.full = True  # full before the header could be written
    monkeypatch.setattr(csvlog, "os", disk)
    log = CsvLog(LogConfig(csv=str(tmp_path / "log.csv")), LABELS)
    write_frames(log, 0, 3)
    assert log.backlog == 6
    log.close(timeout=0)
    assert log.rows_lost == 6 and log.rows_written == 0


# -- soak output ---------------------------------------------------------------------------------------------
def test_soak_reports_fps_rss_and_rows_against_expected(tflite_model, face_models):
    result = run_device("soak", "--frames", "40", "--warmup", "10", "--model", str(tflite_model),
                        "--face-models", str(face_models))
    assert result.returncode == 0, result.stderr[-2000:]
    faces_seen = int(re.search(r"(\d+) faces", result.stdout).group(1))
    assert re.search(r"\d+\.\d fps", result.stdout)
    assert f"CSV rows written: {faces_seen} of {faces_seen} expected" in result.stdout
    assert re.search(r"RSS start \(after 10 warm-up frames\): [\d.]+ MB; RSS end: [\d.]+ MB", result.stdout)
