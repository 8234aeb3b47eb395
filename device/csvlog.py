"""The CSV log: one row per face per processed frame, durable across crashes.

- Rows go to the file every frame with ``os.write`` on an O_APPEND descriptor
  (no user-space buffer), and are fsynced every ``fsync_interval`` seconds.
- Opening an existing file repairs a torn last line (a crash mid-write) and
  keeps its single header; a file with other columns is an error.
- ``rotate = "daily"`` or ``"size"`` writes ``emotions-YYYY-MM-DD[.N].csv`` files
  in a folder, each with its header, and deletes those older than
  ``retention_days``.
- A full disk logs one warning and keeps the rows in memory; they are written
  when space returns, so the pipeline keeps running and no row is lost.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from device.config import LogConfig
from device.errors import ConfigError
from device.frames import Face, Frame

log = logging.getLogger(__name__)

FIXED = ["timestamp", "frame", "source", "track_id", "x", "y", "w", "h", "label", "confidence"]
ROTATED = re.compile(r"^emotions-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.csv$")
MAX_PENDING_BYTES = 64 << 20  # rows held in memory while the disk is full


def columns(labels: tuple[str, ...]) -> list[str]:
    return FIXED + [f"p_{label}" for label in labels]


def _quote(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_rows(frame: Frame, faces: list[Face]) -> str:
    stamp = frame.timestamp.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    source = _quote(frame.source)
    lines = []
    for f in faces:
        probs = ",".join(f"{float(p):.4f}" for p in f.probs)
        lines.append(f"{stamp},{frame.index},{source},{f.track_id},{f.box.x},{f.box.y},{f.box.w},{f.box.h},"
                     f"{_quote(f.label)},{f.confidence:.4f},{probs}\n")
    return "".join(lines)


class CsvLog:
    def __init__(self, cfg: LogConfig, labels: tuple[str, ...]):
        self.cfg, self.header = cfg, ",".join(columns(labels)) + "\n"
        self.rows_written = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending = b""
        self._disk_full = False
        self._last_sync = time.monotonic()
        self._open(self._target_path())

    # -- files ---------------------------------------------------------------------------------
    def _target_path(self) -> Path:
        if self.cfg.rotate == "none":
            return Path(self.cfg.csv)
        folder = Path(self.cfg.csv)
        today = datetime.now(timezone.utc).date().isoformat()
        if self.cfg.rotate == "daily":
            return folder / f"emotions-{today}.csv"
        # size: the newest file of today while it is under the limit, else the next number
        n = 0
        while True:
            path = folder / (f"emotions-{today}.csv" if n == 0 else f"emotions-{today}.{n}.csv")
            if not path.exists() or path.stat().st_size < self.cfg.max_bytes:
                return path
            n += 1

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if os.fstat(fd).st_size == 0:
            self._pending = self.header.encode() + self._pending
        self._fd, self._path = fd, path
        self._flush()
        if self.cfg.rotate != "none":
            self._apply_retention(path.parent)

    def _repair(self, path: Path) -> None:
        """Cut a torn last line (power cut mid-write) and check the header."""
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as f:
            first = f.readline()
            if first.decode(errors="replace") != self.header:
                raise ConfigError(f"log.csv: {path} has other columns than this model's; use another file")
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                # walk back to the last newline and truncate after it
                pos = size
                while pos > 0:
                    step = min(4096, pos)
                    f.seek(pos - step)
                    chunk = f.read(step)
                    nl = chunk.rfind(b"\n")
                    if nl >= 0:
                        pos = pos - step + nl + 1
                        break
                    pos -= step
                f.truncate(pos)
                log.warning("%s: removed a partial last line left by an interrupted write", path)

    def _apply_retention(self, folder: Path) -> None:
        if not self.cfg.retention_days:
            return
        cutoff = datetime.now(timezone.utc).date() - timedelta(days=self.cfg.retention_days)
        for path in folder.iterdir():
            match = ROTATED.match(path.name)
            if match and date.fromisoformat(match.group(1)) < cutoff and path != self._path:
                path.unlink(missing_ok=True)
                log.info("retention: deleted %s", path)

    # -- writing -------------------------------------------------------------------------------
    def write(self, frame: Frame, faces: list[Face]) -> None:
        if self.cfg.rotate != "none":
            target = self._target_path()
            if target != self._path:
                self._close_fd()
                self._open(target)
        if faces:
            self._pending += format_rows(frame, faces).encode()
            self.rows_written += len(faces)  # counted when accepted; held in memory while the disk is full
        self._flush()
        if self.cfg.fsync_interval == 0 or time.monotonic() - self._last_sync >= self.cfg.fsync_interval:
            self._sync()

    def _flush(self) -> None:
        while self._pending and self._fd is not None:
            try:
                n = os.write(self._fd, self._pending)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if not self._disk_full:
                    log.warning("CSV log: disk full, holding rows in memory until space returns (%s)", self._path)
                    self._disk_full = True
                if len(self._pending) > MAX_PENDING_BYTES:
                    log.error("CSV log: %d bytes pending on a full disk", len(self._pending))
                return
            self._pending = self._pending[n:]
        if self._disk_full and not self._pending:
            log.warning("CSV log: space is back, pending rows written")
            self._disk_full = False

    def _sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                log.warning("CSV log: fsync failed: %s", exc)
        self._last_sync = time.monotonic()

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): continue in a fresh file at the configured path."""
        self._close_fd()
        self._open(self._target_path())

    def _close_fd(self) -> None:
        if self._fd is not None:
            self._flush()
            self._sync()
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        if self._pending:
            log.error("CSV log: %d bytes could not be written (disk full)", len(self._pending))

    @property
    def path(self) -> Path | None:
        return self._path
