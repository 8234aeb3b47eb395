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


def test_filter_drops_info_and_warning_lines_only():
    from device.native import CHATTER

    dropped = [b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
               b"INFO: [accelerator_registry.cc:43] DestroyAccelerator: ptr=0x55e8321a9690, name=NpuAccelerator",
               b"WARNING: Logging before InitGoogle() is written to STDERR",
               b"W0000 00:00:1796192858.425483    4430 inference_runner_litert.cc:1433] Input tensor memory is not",
               b"I0000 00:00:1796192858.425483    4430 gl_context.cc:357] GL version: 3.2",
               b"[ WARN:0@3.507] global cap.cpp:212 open VIDEOIO(V4L2): backend is generally available"]
    kept = [b"E0000 00:00:1796192858.425483    4430 calculator_graph.cc:887] INTERNAL: graph failed",
            b"F0000 00:00:1796192858.425483    4430 check failed",
            b"ERROR: failed to allocate tensors",
            b"[ERROR:0@1.2] global persistence.cpp:512 open can't open file",
            b"Fatal Python error: Segmentation fault",
            b"INFORMATION without a colon is not the native format"]
    assert [line for line in dropped if not CHATTER.match(line)] == []
    assert [line for line in kept if CHATTER.match(line)] == []
