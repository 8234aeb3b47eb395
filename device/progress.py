"""Progress of a long job on a terminal: done/total, rate and ETA on one rewritten line.

Shown only when stdout is a terminal and the process is not a systemd service
(``INVOCATION_ID`` or ``NOTIFY_SOCKET`` set): logs, pipes and the journal get nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def wanted(stdout: TextIO | None = None) -> bool:
    stdout = stdout or sys.stdout
    if os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        return stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``update(done)`` as work goes; ``close()`` ends the line.  ``total`` None: count and rate only."""

    def __init__(self, total: float | None, unit: str = "", label: str = "", interval: float = 0.5,
                 stream: TextIO | None = None, enabled: bool | None = None, scale: float = 1.0):
        self.total, self.unit, self.label, self.interval, self.scale = total, unit, label, interval, scale
        self.stream = stream or sys.stdout  # the terminal that wanted() checked; erased before results print
        self.enabled = wanted() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = float("-inf")  # the first update draws at once
        self._shown = False

    def line(self, done: float, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = done / elapsed
        count = f"{done / self.scale:,.0f}"
        if self.total:
            count += f"/{self.total / self.scale:,.0f}{self.unit} ({100 * done / self.total:.0f}%)"
            eta = f", ETA {_clock(max(self.total - done, 0) / rate)}" if rate > 0 else ""  # counts can be estimates
        else:
            count += self.unit
            eta = ""
        return f"{self.label}{count}, {rate / self.scale:,.1f}{self.unit}/s{eta}"

    def update(self, done: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.line(done, now))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
