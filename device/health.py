"""The run's one-line reports: the health line (the log and ``systemctl status``, every ``stats_interval``)
and the summary at the end."""

from __future__ import annotations

from pathlib import Path

from device.csvlog import CsvLog
from device.sources import FrameSource
from device.stages import Stats


def soc_temperature() -> float | None:
    """SoC temperature in °C where the kernel exposes it (Pi, Jetson)."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None


def health_line(s: Stats, csv: CsvLog | None, consumers: str = "") -> str:
    """``consumers``: the result consumers' part (", mqtt connected, ..."), appended as it is."""
    total = sum(s.median_ms().values())
    temp = soc_temperature()
    held = ""
    if csv is not None and (csv.backlog or csv.rows_dropped):
        held = f", csv disk full: {csv.backlog} rows held, {csv.rows_dropped} dropped"
    return (f"fps {s.fps():.1f}, frames {s.frames}, faces {s.faces}, latency {total:.1f} ms, "
            f"dropped frames {s.skipped_frames}, reconnects {s.reconnects}"
            + (f", soc {temp:.1f} C" if temp is not None else "") + held + consumers)


def summary(s: Stats, csv: CsvLog | None, source: FrameSource | None) -> str:
    """After the run is closed, so the CSV count is what is on disk."""
    rows = ""
    if csv is not None:
        rows = (f", {csv.rows_written} rows added to {csv.path}" if csv.appended
                else f", {csv.rows_written} CSV rows in {csv.path}")
    early = source.ended_early if source is not None else None
    short = f"; source ended early: {early[0]} of {early[1]} frames" if early else ""
    return (f"done: {s.frames} frames, {s.faces} faces, {s.frames_without_faces} frames without a face, "
            f"{s.skipped_frames} unreadable frames skipped, {s.processing_fps():.1f} fps processing"
            f"{rows}{short}")
