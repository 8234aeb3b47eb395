"""The CSV log: one row per face per processed frame, durable across crashes.

- Rows go to the file every frame with ``os.write`` on an O_APPEND descriptor
  (no user-space buffer, so SIGKILL loses nothing already written), and are
  fsynced every ``fsync_interval`` seconds (power cuts).
- The file only ever holds whole rows: a short write (the disk filled mid-row)
  is cut back to the last complete row.  Opening an existing file repairs what
  a power cut can still leave (a torn last line, a tail of NUL bytes, a torn
  header) and keeps its single header; a file with other columns is an error.
- ``rotate = "daily"`` or ``"size"`` writes ``emotions-YYYY-MM-DD[.N].csv`` files
  (UTC dates) in a folder, each with its header, and deletes those older than
  ``retention_days``.
- A full disk (or a file-size limit) logs one warning and holds the rows in
  memory (up to ``MAX_PENDING_BYTES``, then new rows are dropped and counted);
  they are written when space returns, so the pipeline keeps running.  At
  ``close()`` the held rows are retried for ``flush_timeout`` seconds; what is
  still held then is counted in ``rows_lost``, never in ``rows_written``.
- Every row carries ``run``, the run's start time (UTC), so appended runs can
  be told apart.  A file is appended to only when its header is this one.  A
  file this program wrote for a model with other labels (an upgrade from 7 to
  8 classes) is renamed aside, rows intact, and a new file is started; any
  other file (another program's, an older version's) is refused, never emptied.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from device import outpaths
from device.config import LogConfig
from device.errors import ConfigError, OutputError, WriteError
from device.frames import Face, Frame

log = logging.getLogger(__name__)

FIXED = ["timestamp", "run", "frame", "source", "track_id", "x", "y", "w", "h", "label", "confidence"]
ROTATED = re.compile(r"^emotions-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.csv$")
MAX_PENDING_BYTES = 64 << 20  # rows held in memory while the disk is full (~200,000 rows)
REPAIR_WINDOW = 1 << 20  # how far back from the end a power cut can leave garbage
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # rows are held until they can be written
REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file-size limit reached"}


def columns(labels: tuple[str, ...]) -> list[str]:
    return FIXED + [f"p_{label}" for label in labels]


def _quote(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def utc_stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_rows(frame: Frame, faces: list[Face], run: str) -> str:
    stamp = utc_stamp(frame.timestamp)
    source = _quote(frame.source)
    lines = []
    for f in faces:
        probs = ",".join(f"{float(p):.4f}" for p in f.probs)
        lines.append(f"{stamp},{run},{frame.index},{source},{f.track_id},{f.box.x},{f.box.y},{f.box.w},{f.box.h},"
                     f"{_quote(f.label)},{f.confidence:.4f},{probs}\n")
    return "".join(lines)


def relabelled(first_line: str, header: str) -> bool:
    """This program's CSV, written for a model with other labels: the fixed columns, then other ``p_`` ones."""
    theirs = first_line.rstrip("\r\n").split(",")
    return (first_line.endswith("\n") and first_line != header and theirs[:len(FIXED)] == FIXED
            and len(theirs) > len(FIXED) and all(c.startswith("p_") for c in theirs[len(FIXED):]))


def check_header(first_line: str, header: str, path: Path) -> None:
    """Refuse a file that is not this program's CSV with these columns (it is never emptied)."""
    if first_line == header or relabelled(first_line, header):
        return
    theirs, ours = first_line.rstrip("\r\n").split(","), header.rstrip("\n").split(",")
    if "run" not in theirs and theirs == [c for c in ours if c != "run"]:
        raise ConfigError(f"log.csv: {path} was written by an older version (no run column); "
                          f"move it away or use another file")
    if theirs[:1] != ["timestamp"]:
        raise ConfigError(f"log.csv: {path} is not this program's CSV; use another file")
    raise ConfigError(f"log.csv: {path} has other columns than this model's; use another file")


def check_target(cfg: LogConfig, labels: tuple[str, ...]) -> None:
    """At start, before the camera opens: the log can be written, and an existing file is ours."""
    if cfg.rotate != "none":
        outpaths.check_dir(cfg.csv, "--csv")
        return
    path = Path(cfg.csv)
    outpaths.check_file(path, "--csv")
    if path.is_file() and path.stat().st_size:
        header = ",".join(columns(labels)) + "\n"
        with open(path, "rb") as f:
            first = f.readline(len(header) + 1)
        if first.endswith(b"\n") or not header.encode().startswith(first.rstrip(b"\0")):  # not a torn header
            check_header(first.decode(errors="replace"), header, path)


def set_aside(path: Path, header: str) -> Path | None:
    """Rename a CSV of this program's that has another model's labels to ``NAME.labels-UNTIL.csv`` (its rows
    kept, nothing copied or cut), so that a new file with this model's columns starts at ``path``."""
    try:
        with open(path, "rb") as f:
            first = f.readline(64 << 10).decode(errors="replace")
    except FileNotFoundError:
        return None
    if not relabelled(first, header):
        return None
    repair(path, first)  # a torn last row from a crash goes; the rows stay
    labels = [c[2:] for c in first.rstrip("\r\n").split(",")[len(FIXED):]]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        aside = path.with_name(f"{path.stem}.{len(labels)}-labels-until-{stamp}{f'.{n}' if n else ''}{path.suffix}")
        if not aside.exists():
            break
    os.rename(path, aside)
    _fsync_dir(path.parent)
    log.warning("log.csv: %s has the columns of a model with other labels (%s); renamed it to %s and started a "
                "new file", path, ", ".join(labels), aside.name)
    return aside


def repair(path: Path, header: str) -> int:
    """Make ``path`` end with a whole row after a crash; returns the bytes cut (0: it was fine).

    Cuts a torn last line and any trailing lines holding NUL bytes (what some
    filesystems leave of unsynced appends after a power cut).  A file that is
    only a torn header is emptied, so the header is written again in full.
    Raises ConfigError, touching nothing, when the file is not this CSV.
    """
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - REPAIR_WINDOW)
        f.seek(start)
        tail = f.read()
        keep = len(tail) if tail.endswith(b"\n") else tail.rfind(b"\n") + 1
        while keep > 0 and b"\0" in tail[tail.rfind(b"\n", 0, keep - 1) + 1:keep]:
            keep = tail.rfind(b"\n", 0, keep - 1) + 1  # drop a NUL-filled line
        if keep == 0 and start > 0:
            raise ConfigError(f"log.csv: {path} has no complete row in its last {REPAIR_WINDOW} bytes; move it away")
        f.seek(0)
        if keep:
            check_header(f.readline(len(header) + 1).decode(errors="replace"), header, path)
        elif not header.encode().startswith(tail.rstrip(b"\0")):  # not a torn header: someone else's file
            raise ConfigError(f"log.csv: {path} is not this program's CSV; use another file")
        cut = size - (start + keep)
        if cut:
            f.truncate(start + keep)
            os.fsync(f.fileno())
            log.warning("%s: removed %d bytes of a partial last row left by an interrupted write", path, cut)
        return cut


def _fsync_dir(folder: Path) -> None:
    """Make a new file's name durable, not only its contents."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CsvLog:
    def __init__(self, cfg: LogConfig, labels: tuple[str, ...], run: datetime | None = None):
        self.cfg, self.header = cfg, ",".join(columns(labels)) + "\n"
        self.run = utc_stamp(run or datetime.now(timezone.utc))
        self._rows_accepted = 0  # on disk, or held while the disk is full
        self.rows_dropped = 0  # rows refused because the memory for held rows ran out
        self.appended = False  # a file it opened held rows from before this log: rows_written were added to them
        self._opened: set[Path] = set()  # a reopen (SIGHUP) finds this log's own rows there: not an append
        self._reason = ""  # why rows are held: disk full, file-size limit
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending = bytearray()
        self._disk_full = False
        self._last_sync = time.monotonic()
        self.set_aside: Path | None = None  # where a file with another model's labels was renamed to
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.set_aside = set_aside(path, self.header) or self.set_aside
            repair(path, self.header)
            existed = path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise OutputError(f"--csv {path}: cannot write: {exc.strerror or exc}") from None
        if not existed:
            _fsync_dir(path.parent)
        size = os.fstat(fd).st_size
        if size == 0:
            self._pending[:0] = self.header.encode()
        if path not in self._opened:
            self.appended = self.appended or size > len(self.header.encode())
            self._opened.add(path)
        self._fd, self._path = fd, path
        self._flush()
        if self.cfg.rotate != "none":
            self._apply_retention(path.parent)

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
            self._hold(format_rows(frame, faces, self.run).encode(), len(faces))
        self._flush()
        if self.cfg.fsync_interval == 0 or time.monotonic() - self._last_sync >= self.cfg.fsync_interval:
            self._sync()

    def _hold(self, rows: bytes, count: int) -> None:
        if len(self._pending) + len(rows) > MAX_PENDING_BYTES:
            if not self.rows_dropped:
                log.error("CSV log: %d MB of rows held on a full disk; dropping new rows until space returns",
                          MAX_PENDING_BYTES >> 20)
            self.rows_dropped += count
            return
        self._pending += rows
        self._rows_accepted += count

    def _flush(self) -> None:
        while self._pending and self._fd is not None:
            try:
                n = os.write(self._fd, self._pending)
            except OSError as exc:
                if exc.errno not in DISK_FULL:  # EIO, a vanished device: one line and exit 74, no traceback
                    raise WriteError(f"--csv {self._path}: cannot write: {exc.strerror or exc}") from None
                self._on_disk_full(exc.errno)
                return
            if n < len(self._pending):  # a short write: the disk filled mid-row, or the file-size limit
                code = errno.EFBIG if self._at_size_limit() else errno.ENOSPC
                del self._pending[:self._cut_partial_row(n)]
                self._on_disk_full(code)
                return
            del self._pending[:n]
        if self._disk_full and not self._pending:
            log.warning("CSV log: the held rows are written (%s)", self._path)
            self._disk_full = False

    def _at_size_limit(self) -> bool:
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return soft != resource.RLIM_INFINITY and os.fstat(self._fd).st_size >= soft

    def _cut_partial_row(self, written: int) -> int:
        """Truncate a short write back to its last whole row, so the file never holds half a row."""
        whole = self._pending.rfind(b"\n", 0, written) + 1
        if whole < written:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - (written - whole))
        return whole

    def _on_disk_full(self, code: int) -> None:
        self._reason = REASONS.get(code, os.strerror(code))
        if not self._disk_full:
            log.warning("CSV log: %s (%s); holding rows in memory until they can be written (%s)",
                        self._reason, errno.errorcode.get(code, code), self._path)
            self._disk_full = True

    def _sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
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

    def close(self, timeout: float | None = None) -> None:
        """Write what is held, retrying for ``timeout`` s (default ``flush_timeout``): the stop budget."""
        deadline = time.monotonic() + (self.cfg.flush_timeout if timeout is None else timeout)
        self._flush()
        while self._pending and self._fd is not None and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            self._flush()
        self._close_fd()
        if self.rows_lost:
            log.error("CSV log: %s", self.loss)

    @property
    def backlog(self) -> int:
        """Rows held in memory, not yet in the file (the disk is full); headers are not rows."""
        return self._pending.count(b"\n") - self._pending.count(self.header.encode())

    @property
    def rows_written(self) -> int:
        """Rows that are in the file."""
        return self._rows_accepted - self.backlog

    @property
    def rows_lost(self) -> int:
        """Rows not in the file: still held, or dropped when the memory for held rows ran out."""
        return self.backlog + self.rows_dropped

    @property
    def loss(self) -> str:
        return f"{self.rows_lost} CSV rows could not be written to {self._path} ({self._reason or 'unknown'})"

    @property
    def disk_full(self) -> bool:
        return self._disk_full

    @property
    def path(self) -> Path | None:
        return self._path
