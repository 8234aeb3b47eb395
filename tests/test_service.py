"""Running as a systemd service: sd_notify, signals, crash safety, reconnects, bad input, the unit.

End-to-end tests run ``python -m device run`` in a subprocess with a fake
``$NOTIFY_SOCKET`` (a unix datagram socket in tmp), as systemd would.
In-process tests replace the camera with fakes.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device import csvlog, pipeline as pipeline_mod
from device.config import ClassifierConfig, Config, DetectorConfig, LogConfig, RunConfig, SourceConfig
from device.errors import SourceError
from device.facemodels import FACE_MODELS
from device.service import SdNotifier
from device.sources import DemoSource, FrameSource

ROOT = Path(__file__).resolve().parents[1]
FACE_DIR = ROOT / "models"
UNIT = ROOT / "systemd" / "emotion-device.service"
MAX_EXPOSURE = 2.5


# -- sd_notify --------------------------------------------------------------------------------------
class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float, count: int = 1) -> list[str]:
        """Messages until ``count`` of them hold ``field`` (a line such as READY=1); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.count(field) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field} within {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return self.messages

    def count(self, field: str) -> int:
        return sum(field in m.splitlines() for m in self.messages)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_notifier_sends_ready_status_and_stopping(notify_socket):
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.path})
    notifier.ready()
    notifier.status("fps 12.0, frames 40\nsecond line dropped")
    notifier.reloading()
    notifier.stopping()
    messages = notify_socket.wait_for("STOPPING=1", 2)
    assert messages[0].splitlines() == ["READY=1", "STATUS=running"]
    assert messages[1] == "STATUS=fps 12.0, frames 40"
    assert "RELOADING=1" in messages[2] and re.search(r"^MONOTONIC_USEC=\d+$", messages[2], re.M)


def test_watchdog_is_sent_at_half_the_timeout(notify_socket):
    now = [100.0]
    notifier = SdNotifier(notify_socket.path, watchdog_usec=2_000_000, clock=lambda: now[0])
    for _ in range(30):  # 30 frames over 3 s: pings at 0, 1, 2 s
        notifier.watchdog()
        now[0] += 0.1
    notifier.stopping()
    notify_socket.wait_for("STOPPING=1", 2)
    assert notify_socket.count("WATCHDOG=1") == 3


def test_notifier_without_systemd_does_nothing():
    notifier = SdNotifier.from_env({})
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    assert SdNotifier.from_env({"NOTIFY_SOCKET": "/nonexistent/sock"}).send("READY=1") is False
    other = SdNotifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog belongs to another process


def test_abstract_socket_address():
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"emotion-test-{os.getpid()}"
    listener.bind("\0" + name)
    try:
        SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        listener.settimeout(2)
        assert listener.recv(100).startswith(b"READY=1")
    finally:
        listener.close()


# -- the daemon under a fake systemd -----------------------------------------------------------------
def run_daemon(tmp_path, model, csv_path, notify, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if notify is not None:
        env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")  # no WATCHDOG_PID: any pid
    command = [sys.executable, "-m", "device", "run", "--source", "demo", "--loop", "--model", str(model),
               "--face-models", str(FACE_DIR), "--csv", str(csv_path), *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary_counts(stdout: str) -> tuple[int, int]:
    match = re.search(r"done: (\d+) frames, (\d+) faces", stdout)
    assert match, stdout
    return int(match.group(1)), int(match.group(2))


def csv_rows(*paths: Path) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            assert f.read().count("timestamp,run,frame") == 1, f"{path}: not exactly one header"
        with open(path, newline="") as f:
            part = list(csv.DictReader(f))
        assert all(None not in r and None not in r.values() for r in part), f"{path}: a malformed row"
        rows += part
    return rows


def test_sigterm_after_ready_stops_within_2s_and_loses_no_row(tmp_path, tflite_model, face_models,
                                                               notify_socket):
    out = tmp_path / "rows.csv"
    daemon = run_daemon(tmp_path, tflite_model, out, notify_socket)
    try:
        notify_socket.wait_for("READY=1", 90)
        notify_socket.wait_for("WATCHDOG=1", 10)  # frames flow
        time.sleep(1.0)
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        stdout, stderr = daemon.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr
    print(f"SIGTERM to exit: {took:.2f} s")
    assert took < 2.0, f"exit took {took:.2f} s"
    notify_socket.wait_for("STOPPING=1", 1)
    frames, faces = summary_counts(stdout)
    rows = csv_rows(out)
    assert frames > 5 and faces == 2 * frames  # the demo shows two faces in every frame
    assert len(rows) == faces
    assert sorted({int(r["frame"]) for r in rows}) == list(range(frames))
    assert "SIGTERM: stopped after the current frame" in stderr


def test_sighup_reopens_the_csv_and_reloads_the_model(tmp_path, tflite_model, face_models, notify_socket):
    model = tmp_path / "models" / "emotion.tflite"
    model.parent.mkdir()
    for src in (tflite_model, tflite_model.with_suffix(".json")):
        shutil.copy(src, model.with_suffix(src.suffix))
    out = tmp_path / "rows.csv"
    daemon = run_daemon(tmp_path, model, out, notify_socket)
    try:
        notify_socket.wait_for("READY=1", 90)
        out.rename(tmp_path / "rows.csv.1")  # logrotate
        shutil.copy(tflite_model, model)  # a new model copied in place
        daemon.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", 10)
        notify_socket.wait_for("READY=1", 20, count=2)  # READY=1 again once reloaded
        deadline = time.monotonic() + 20
        while not out.exists() or out.stat().st_size < 500:
            assert time.monotonic() < deadline, "no rows in the reopened CSV"
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        stdout, stderr = daemon.communicate(timeout=10)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr
    assert "reloaded: model" in stderr
    assert any(m.startswith("STATUS=reloaded the config and emotion.tflite") for m in notify_socket.messages)
    frames, faces = summary_counts(stdout)
    assert len(csv_rows(tmp_path / "rows.csv.1", out)) == faces  # both files whole, no row lost


def test_sigkill_then_restart_repairs_the_csv(tmp_path, tflite_model, face_models, notify_socket):
    out = tmp_path / "rows.csv"
    daemon = run_daemon(tmp_path, tflite_model, out, notify_socket)
    try:
        notify_socket.wait_for("READY=1", 90)
        time.sleep(1.0)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        daemon.kill()
    before = len(csv_rows(out))
    with open(out, "ab") as f:  # SIGKILL leaves whole rows (one write per frame); a power cut may not
        f.write(b"2030-01-01T00:00:00.000Z,99999,demo,1,153,10")
    restarted = run_daemon(tmp_path, tflite_model, out, None, "--max-frames", "5")
    stdout, stderr = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, stderr
    assert "partial last row" in stderr
    rows = csv_rows(out)  # one header, every row whole
    assert len(rows) == before + summary_counts(stdout)[1]
    assert "99999" not in {r["frame"] for r in rows}


# -- bad input ------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_invalid_config_exits_78_naming_the_key(tmp_path):
    config = tmp_path / "device.toml"
    config.write_text("[detector]\ntiles = 99\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 78
    assert "detector.tiles" in result.stderr and "Traceback" not in result.stderr
    config.write_text("[log]\nfsync_intervall = 1\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 78 and "log.fsync_intervall" in result.stderr


def test_missing_model_exits_78_naming_the_command(tmp_path, face_models):
    result = run_cli("run", "--source", "demo", "--model", str(tmp_path / "none.tflite"))
    assert result.returncode == 78 and "python -m convert quantize" in result.stderr


def test_missing_face_models_exit_78_naming_the_command(tmp_path, tflite_model):
    result = run_cli("run", "--source", "demo", "--model", str(tflite_model), "--face-models", str(tmp_path))
    assert result.returncode == 78 and "python -m device models" in result.stderr


def test_missing_camera_is_retried_then_exits_66(tmp_path, tflite_model, face_models, notify_socket):
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "device", "run", "--source", "/dev/video99", "--model",
                             str(tflite_model), "--face-models", str(face_models), "--no-frame-timeout", "2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 66, result.stderr
    assert "giving up" in result.stderr and time.monotonic() - started >= 2
    assert len(re.findall(r"retrying in", result.stderr)) >= 2
    notify_socket.wait_for("STATUS=no camera: cannot open /dev/video99; retrying in 0.5 s", 2)
    assert notify_socket.count("READY=1") == 0


def test_sigterm_while_waiting_for_the_camera_exits_0(tmp_path, tflite_model, face_models, notify_socket):
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path)
    daemon = subprocess.Popen([sys.executable, "-m", "device", "run", "--source", "/dev/video99", "--model",
                               str(tflite_model), "--face-models", str(face_models)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for("STATUS=no camera: cannot open /dev/video99; retrying in 1.0 s", 90)
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr
    assert took < 2.0
    notify_socket.wait_for("STOPPING=1", 1)


# -- in process: fake cameras -----------------------------------------------------------------------
class FlakyCamera(FrameSource):
    """A live camera showing the demo that fails after ``fail_after`` frames (unplugged)."""

    live = True
    name = "flaky"

    def __init__(self, fail_after: int | None):
        super().__init__()
        self.demo = DemoSource(SourceConfig(loop=True))
        self.fail_after = fail_after
        self.closed = False

    def read(self):
        if self.fail_after is not None and self.index >= self.fail_after:
            raise SourceError("flaky stopped delivering frames")
        frame = self.demo.read()
        return self._frame(frame.image)

    def close(self):
        self.closed = True


def config_for(model: Path, csv_path: Path | None = None, **run) -> Config:
    return Config(source=SourceConfig(uri="/dev/video7"), classifier=ClassifierConfig(model=str(model)),
                  detector=DetectorConfig(models_dir=str(FACE_DIR)),
                  log=LogConfig(csv=str(csv_path) if csv_path else None),
                  run=RunConfig(**{"no_frame_timeout": 5.0, "reconnect_max_delay": 0.2, **run}))


class Recorder:
    def __init__(self):
        self.events: list[str] = []

    def ready(self):
        self.events.append("READY")

    def watchdog(self):
        self.events.append("WATCHDOG")

    def status(self, text):
        self.events.append(f"STATUS {text}")

    def reloading(self):
        self.events.append("RELOADING")

    def stopping(self):
        self.events.append("STOPPING")


def test_camera_that_fails_is_reconnected(tmp_path, tflite_model, face_models, monkeypatch):
    opened: list[FlakyCamera] = []
    plan = iter([5, "missing", None])  # 5 frames, then unplugged; the first retry finds nothing

    def fake_open(uri, cfg=None, stop=None):
        step = next(plan)
        if step == "missing":
            raise SourceError("cannot open /dev/video7")
        opened.append(FlakyCamera(step))
        return opened[-1]

    monkeypatch.setattr(pipeline_mod, "open_source", fake_open)
    notifier = Recorder()
    pipe = pipeline_mod.Pipeline(config_for(tflite_model, tmp_path / "rows.csv", max_frames=12), notifier)
    try:
        stats = pipe.run()
    finally:
        pipe.close()
    assert stats.frames == 12 and stats.reconnects == 1 and opened[0].closed
    assert len(csv_rows(tmp_path / "rows.csv")) == stats.faces == 24
    statuses = [e for e in notifier.events if e.startswith("STATUS")]
    assert any("flaky stopped delivering frames; retrying" in s for s in statuses)
    assert any("cannot open /dev/video7; retrying" in s for s in statuses)
    assert "STATUS camera /dev/video7 connected" in statuses
    # WATCHDOG only while frames flow: none between the failure and the reconnect
    lost = notifier.events.index(statuses[0])
    back = notifier.events.index("STATUS camera /dev/video7 connected")
    assert "WATCHDOG" not in notifier.events[lost:back]


def test_camera_missing_at_start_is_waited_for(tmp_path, tflite_model, face_models, monkeypatch):
    attempts = []

    def fake_open(uri, cfg=None, stop=None):
        attempts.append(uri)
        if len(attempts) < 3:
            raise SourceError("no camera found")
        return FlakyCamera(None)

    monkeypatch.setattr(pipeline_mod, "open_source", fake_open)
    notifier = Recorder()
    pipe = pipeline_mod.Pipeline(config_for(tflite_model, max_frames=3), notifier)
    try:
        stats = pipe.run()
    finally:
        pipe.close()
    assert len(attempts) == 3 and stats.frames == 3
    assert notifier.events.index("READY") > max(i for i, e in enumerate(notifier.events) if "retrying" in e)


def test_camera_that_never_returns_gives_up(tflite_model, face_models, monkeypatch):
    def fake_open(uri, cfg=None, stop=None):
        raise SourceError("cannot open /dev/video7")

    monkeypatch.setattr(pipeline_mod, "open_source", fake_open)
    with pytest.raises(SourceError, match="no frames for 1 s") as info:
        pipeline_mod.Pipeline(config_for(tflite_model, no_frame_timeout=1.0))
    assert info.value.exit_code == 66


def test_reload_swaps_the_model_and_a_broken_one_keeps_the_running_one(tmp_path, tflite_model, face_models,
                                                                        monkeypatch):
    monkeypatch.setattr(pipeline_mod, "open_source", lambda uri, cfg=None, stop=None: FlakyCamera(None))
    notifier = Recorder()
    pipe = pipeline_mod.Pipeline(config_for(tflite_model, tmp_path / "rows.csv"), notifier)
    try:
        pipe.step()
        new_model = tmp_path / "v2" / "emotion.tflite"
        new_model.parent.mkdir()
        for src in (tflite_model, tflite_model.with_suffix(".json")):
            shutil.copy(src, new_model.with_suffix(src.suffix))
        config = dataclasses.replace(pipe.config, classifier=ClassifierConfig(model=str(new_model)))
        classifier, csv_log = pipe.classifier, pipe.csv
        pipe.reload(lambda: config)
        assert pipe.classifier is not classifier and pipe.config is config
        assert pipe.csv is csv_log  # same log settings and labels: the file is reopened, not replaced
        assert notifier.events[-3:] == ["RELOADING", "STATUS reloaded the config and emotion.tflite", "READY"]
        pipe.step()
        assert len(csv_rows(tmp_path / "rows.csv")) == 4
        classifier = pipe.classifier
        broken = dataclasses.replace(config, classifier=ClassifierConfig(model=str(tmp_path / "gone.tflite")))
        pipe.reload(lambda: broken)
        assert pipe.classifier is classifier and pipe.config is config
        assert notifier.events[-3] == "RELOADING" and notifier.events[-1] == "READY"
        assert notifier.events[-2].startswith("STATUS reload failed: emotion model not found")
        assert pipe.step() is not None  # still running
    finally:
        pipe.close()


class FullDisk:
    """``os`` for device.csvlog with a disk that refuses every write while ``full``."""

    def __init__(self):
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def test_full_disk_keeps_the_pipeline_running_and_loses_no_row(tmp_path, tflite_model, face_models,
                                                                monkeypatch):
    disk = FullDisk()
    monkeypatch.setattr(csvlog, "os", disk)
    monkeypatch.setattr(pipeline_mod, "open_source", lambda uri, cfg=None, stop=None: FlakyCamera(None))
    out = tmp_path / "rows.csv"
    pipe = pipeline_mod.Pipeline(config_for(tflite_model, out), Recorder())
    try:
        for _ in range(3):
            pipe.step()
        disk.full = True
        for _ in range(4):
            pipe.step()
        assert pipe.csv.backlog == 8 and "csv disk full: 8 rows held" in pipe.health_line()
        disk.full = False
        pipe.step()
    finally:
        pipe.close()
    rows = csv_rows(out)
    assert len(rows) == pipe.stats.faces == 16
    assert [int(r["frame"]) for r in rows] == [i for i in range(8) for _ in range(2)]


# -- the unit ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze missing: apt-get install -y systemd")
    return path


@pytest.fixture
def installed(tmp_path) -> Path:
    """``install-service --root``: the unit, config and models as they would land in /."""
    root = tmp_path / "root"
    result = run_cli("install-service", "--root", str(root), "--platform", "generic", "--venv", sys.prefix)
    assert result.returncode == 0, result.stderr
    return root


def test_install_service_writes_unit_config_and_models(installed):
    from device import config as cfgmod
    unit = (installed / "etc/systemd/system/emotion-device.service").read_text()
    assert f"ExecStart={sys.prefix}/bin/python -m device run --config /etc/emotion-device/device.toml" in unit
    config = cfgmod.load(installed / "etc/emotion-device/device.toml")
    assert config.log.csv == "/var/log/emotion-device" and config.log.rotate == "daily"
    models = installed / "var/lib/emotion-device/models"
    assert all((models / name).is_file() for name in FACE_MODELS if (FACE_DIR / name).is_file())
    assert not (installed / "etc/systemd/system/emotion-device.service.d").exists()


def test_install_service_on_a_jetson_adds_its_drop_in(tmp_path):
    from device.install import venv_command
    result = run_cli("install-service", "--root", str(tmp_path), "--platform", "jetson", "--source", "rtsp://cam/1")
    assert result.returncode == 0, result.stderr
    assert "PrivateTmp=no" in (tmp_path / "etc/systemd/system/emotion-device.service.d/jetson.conf").read_text()
    assert 'uri = "rtsp://cam/1"' in (tmp_path / "etc/emotion-device/device.toml").read_text()
    assert "--system-site-packages" in venv_command("/usr/bin/python3", "/opt/v", "pi")
    assert "--system-site-packages" not in venv_command("/usr/bin/python3", "/opt/v", "generic")


def test_unit_declares_what_the_issue_asks():
    text = UNIT.read_text()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expect = {"Type": "notify", "Restart": "on-failure", "ProtectSystem": "strict", "ProtectHome": "yes",
              "PrivateTmp": "yes", "NoNewPrivileges": "yes", "DevicePolicy": "closed",
              "SupplementaryGroups": "video render", "StateDirectory": "emotion-device",
              "LogsDirectory": "emotion-device", "ConfigurationDirectory": "emotion-device",
              "RestartPreventExitStatus": "78 73"}
    for key, value in expect.items():
        assert settings.get(key) == [value], key
    assert {"char-video4linux rw", "char-media rw", "char-dma_heap rw", "char-drm rw"} <= set(settings["DeviceAllow"])
    assert "PrivateDevices" not in settings and "WatchdogSec" in settings and "StartLimitBurst" in settings
    assert "/etc/emotion-device/device.toml" in settings["ExecStart"][0]


@pytest.mark.parametrize("platform", ["generic", "jetson"])
def test_systemd_analyze_verify(systemd_analyze, tmp_path, platform):
    result = run_cli("install-service", "--root", str(tmp_path), "--platform", platform, "--venv", sys.prefix)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system/emotion-device.service"  # with the Jetson drop-in beside it
    result = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # verify exits 0 even for an unknown key; its warnings name the file
    assert not [line for line in result.stderr.splitlines() if "emotion-device" in line], result.stderr


def test_security_exposure_is_at_most_2_5(systemd_analyze):
    result = subprocess.run([systemd_analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE
