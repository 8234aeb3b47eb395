"""Quiet by default: a demo run's stderr holds only the program's own lines; -v shows the native ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The program's log format (cli.main): "2026-12-02 06:27:38,376 INFO device.detector: ...", and "error: ...".
OWN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: |error: )")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_demo_run_prints_only_its_own_lines(tmp_path):
    csv = tmp_path / "out.csv"
    result = run("run", "--source", "demo", "--max-frames", "6", "--csv", str(csv), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if not OWN.match(line)] == []
    assert any("device.detector: face detector" in line for line in lines)  # the program's lines are kept
    assert result.stdout.startswith("done: 6 frames, 12 faces") and "12 CSV rows" in result.stdout
    assert len(csv.read_text().splitlines()) == 13


def test_error_exit_is_one_line(tmp_path):
    result = run("run", "--source", str(tmp_path / "missing.mp4"), cwd=tmp_path)
    assert result.returncode == 66
    lines = result.stderr.splitlines()
    assert [line for line in lines if not OWN.match(line)] == []
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_native_lines(tmp_path):
    result = run("-v", "run", "--source", "demo", "--max-frames", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not OWN.match(line)] != []
