"""Progress lines: done/total, rate and ETA on a terminal; nothing in a pipe or under systemd."""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device import progress
from device.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_has_done_total_rate_and_eta():
    p = Progress(400, " frames", enabled=True, stream=io.StringIO())
    p.started = 100.0
    assert p.line(100, now=110.0) == "100/400 frames (25%), 10.0 frames/s, ETA 0:00:30"
    mb = Progress(50e6, " MB", "report: ", enabled=True, stream=io.StringIO(), scale=1e6)
    mb.started = 0.0
    assert mb.line(10e6, now=4.0) == "report: 10/50 MB (20%), 2.5 MB/s, ETA 0:00:16"


def test_updates_are_throttled_and_erased():
    out = Tty()
    p = Progress(10, " frames", enabled=True, stream=out, interval=3600)
    p.update(1)
    p.update(2)  # within the interval: not drawn
    assert out.getvalue().count("\r") == 1 and "1/10 frames" in out.getvalue()
    p.close()
    assert out.getvalue().endswith("\r\x1b[K")


@pytest.mark.parametrize("env, tty, shown", [({}, True, True), ({}, False, False),
                                             ({"INVOCATION_ID": "abc"}, True, False),
                                             ({"NOTIFY_SOCKET": "/run/x"}, True, False)])
def test_shown_only_on_a_terminal_outside_systemd(monkeypatch, env, tty, shown):
    for key in ("INVOCATION_ID", "NOTIFY_SOCKET"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert progress.wanted(Tty() if tty else io.StringIO()) is shown


def run_on_pty(args: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal; returns (exit code, what the terminal got)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_run_on_a_folder_shows_progress_on_a_terminal_only(fer_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((fer_root / "val" / "happy").iterdir())[:8]:
        shutil.copy(f, images / f.name)
    args = [sys.executable, "-m", "device", "run", "--source", str(images)]
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "NOTIFY_SOCKET")}
    code, screen = run_on_pty(args, ROOT, env)
    assert code == 0
    assert "/8 frames (" in screen and "frames/s, ETA" in screen
    assert "done: 8 frames" in screen
    code, screen = run_on_pty(args, ROOT, {**env, "INVOCATION_ID": "0123"})
    assert code == 0 and "done: 8 frames" in screen and "ETA" not in screen
    piped = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and "ETA" not in piped.stdout + piped.stderr
