"""The CSV log on its own: crash repair, rotation, retention, and a full disk (no model, no camera)."""

from __future__ import annotations

import csv
import errno
import os
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from device import csvlog
from device.config import LogConfig
from device.csvlog import CsvLog, check_target, columns, repair
from device.errors import ConfigError
from device.frames import Box, Face, Frame

LABELS = ("angry", "happy", "neutral")
HEADER = ",".join(columns(LABELS)) + "\n"


def frame(index: int) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), index, "cam", datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))


def faces(n: int = 2) -> list[Face]:
    return [Face(i + 1, Box(10 * i, 5, 20, 20), 0.9, np.array([0.2, 0.5, 0.3]), "happy", 0.5) for i in range(n)]


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(None not in row and None not in row.values() for row in rows), "a row with the wrong field count"
    return rows


def write_frames(log: CsvLog, first: int, count: int) -> None:
    for i in range(first, first + count):
        log.write(frame(i), faces())


# -- crash repair ---------------------------------------------------------------------------------
def test_torn_last_line_is_cut_and_header_not_repeated(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    write_frames(log, 0, 3)
    log.close()
    with open(path, "ab") as f:  # what a power cut mid-write leaves
        f.write(b"2024-05-01T12:00:00.000Z,3,cam,1,0,5,2")
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    write_frames(log, 3, 2)
    log.close()
    text = path.read_text()
    assert text.count("timestamp,run,frame") == 1
    rows = read_rows(path)
    assert [int(r["frame"]) for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_repair_cuts_a_nul_filled_tail(tmp_path):
    path = tmp_path / "log.csv"
    row = "2024-05-01T12:00:00.000Z,2024-05-01T11:00:00.000Z,0,cam,1,0,5,20,20,happy,0.5,0.2,0.5,0.3\n"
    path.write_bytes((HEADER + row).encode() + b"\0" * 300 + b"\n" + b"\0" * 50)
    assert repair(path, HEADER) == 351
    assert path.read_text() == HEADER + row


def test_repair_of_a_torn_header_starts_the_file_again(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(HEADER[:17])
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    write_frames(log, 0, 1)
    log.close()
    assert path.read_text().startswith(HEADER) and path.read_text().count("timestamp") == 1
    assert len(read_rows(path)) == 2


def test_intact_file_is_left_alone(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(HEADER + "x,r,1,cam,1,0,0,1,1,happy,0.1,0.1,0.1,0.8\n")
    before = path.read_bytes()
    assert repair(path, HEADER) == 0
    assert path.read_bytes() == before


def test_other_columns_are_an_error_and_the_file_is_untouched(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("a,b,c\n1,2")
    with pytest.raises(ConfigError, match="other columns|not this program"):
        CsvLog(LogConfig(csv=str(path)), LABELS)
    assert path.read_text() == "a,b,c\n1,2"


# -- rotation and retention -----------------------------------------------------------------------
def test_daily_files_each_have_a_header_and_old_ones_expire(tmp_path, monkeypatch):
    folder = tmp_path / "csv"
    folder.mkdir()
    old = folder / f"emotions-{(date(2030, 1, 1) - timedelta(days=40)).isoformat()}.csv"
    old.write_text(HEADER)
    today = [date(2030, 1, 1)]

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.combine(today[0], datetime.min.time(), timezone.utc)

    monkeypatch.setattr(csvlog, "datetime", Clock)
    log = CsvLog(LogConfig(csv=str(folder), rotate="daily", retention_days=30), LABELS)
    write_frames(log, 0, 2)
    today[0] = date(2030, 1, 2)  # midnight UTC
    write_frames(log, 2, 2)
    log.close()
    first, second = folder / "emotions-2030-01-01.csv", folder / "emotions-2030-01-02.csv"
    assert not old.exists()  # 40 days older than the first file
    assert [len(read_rows(p)) for p in (first, second)] == [4, 4]
    assert all(p.read_text().count("timestamp") == 1 for p in (first, second))


def test_size_rotation_starts_numbered_files(tmp_path):
    folder = tmp_path / "csv"
    log = CsvLog(LogConfig(csv=str(folder), rotate="size", max_bytes=1024), LABELS)
    write_frames(log, 0, 20)
    log.close()
    files = sorted(folder.iterdir())
    assert len(files) >= 2 and all(p.stat().st_size < 1024 + 200 for p in files)
    assert sum(len(read_rows(p)) for p in files) == 40


def test_reopen_after_logrotate_moved_the_file(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    write_frames(log, 0, 2)
    path.rename(tmp_path / "log.csv.1")
    log.reopen()
    write_frames(log, 2, 2)
    log.close()
    assert [len(read_rows(p)) for p in (tmp_path / "log.csv.1", path)] == [4, 4]


# -- a full disk ----------------------------------------------------------------------------------
class FullDisk:
    """``os`` for device.csvlog, with a disk that fills up: ENOSPC, or a short write mid-row first."""

    def __init__(self):
        self.full = False
        self.short_once = False
        self.refused = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.short_once:  # the last bytes of the disk: part of a row goes in
            self.short_once, self.full = False, True
            return os.write(fd, bytes(data[:len(data) // 2 + 7]))
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def test_full_disk_holds_rows_and_writes_them_when_space_returns(tmp_path, monkeypatch, caplog):
    disk = FullDisk()
    monkeypatch.setattr(csvlog, "os", disk)
    path = tmp_path / "log.csv"
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    write_frames(log, 0, 3)
    disk.short_once = True
    write_frames(log, 3, 5)  # the disk fills mid-row, then refuses everything
    assert disk.refused >= 4 and log.disk_full
    assert log.backlog > 0
    on_disk = read_rows(path)  # parseable while full: the half row was cut back
    assert len(on_disk) < 16
    assert sum("disk full" in r.message for r in caplog.records) == 1  # one warning, not one per frame
    disk.full = False
    write_frames(log, 8, 2)
    log.close()
    rows = read_rows(path)
    assert [int(r["frame"]) for r in rows] == [i for i in range(10) for _ in range(2)]
    assert log.rows_written == 20 and log.rows_dropped == 0 and not log.disk_full


def test_full_disk_drops_new_rows_beyond_the_memory_limit(tmp_path, monkeypatch):
    disk = FullDisk()
    monkeypatch.setattr(csvlog, "os", disk)
    monkeypatch.setattr(csvlog, "MAX_PENDING_BYTES", 1000)
    log = CsvLog(LogConfig(csv=str(tmp_path / "log.csv")), LABELS)
    disk.full = True
    write_frames(log, 0, 50)
    assert log.rows_dropped > 0 and log.rows_written + log.backlog + log.rows_dropped == 100
    disk.full = False
    log.close()
    assert len(read_rows(tmp_path / "log.csv")) == log.rows_written


# -- an upgrade to a model with other labels ----------------------------------------------------------
def one_face(probs: list[float]) -> Face:
    return Face(1, Box(0, 0, 8, 8), 0.9, np.array(probs), "happy", max(probs))


def test_a_csv_of_another_models_labels_is_renamed_aside_with_its_rows(tmp_path, caplog):
    path = tmp_path / "log.csv"
    seven = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    old = CsvLog(LogConfig(csv=str(path)), seven)
    old.write(frame(1), [one_face([0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1])])
    old.close()
    with open(path, "ab") as f:
        f.write(b"2030-01-01T00:00:00.000Z,torn")  # a crash mid-row
    before = path.read_bytes()
    eight = ("angry", "contempt", *seven[1:])
    check_target(LogConfig(csv=str(path)), eight)  # accepted at start: it is ours
    with caplog.at_level("WARNING"):
        new = CsvLog(LogConfig(csv=str(path)), eight)
    new.write(frame(2), [one_face([0.0, 0.1, 0.1, 0.1, 0.3, 0.2, 0.1, 0.1])])
    new.close()
    aside = sorted(tmp_path.glob("log.7-labels-until-*.csv"))
    assert len(aside) == 1 and new.set_aside == aside[0]
    assert aside[0].read_bytes() == before[:before.rindex(b"\n") + 1]  # every whole row kept, the torn one cut
    assert aside[0].read_text().count("\n") == 2
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(columns(eight)) and len(lines) == 2 and lines[1].split(",")[2] == "2"
    assert sum("renamed it to" in r.getMessage() for r in caplog.records) == 1


def test_a_foreign_csv_is_still_refused_when_the_labels_change(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("timestamp,camera,value\n1,2,3\n")
    with pytest.raises(ConfigError, match="not this program|other columns"):
        CsvLog(LogConfig(csv=str(path)), LABELS)
    assert path.read_text() == "timestamp,camera,value\n1,2,3\n" and len(list(tmp_path.iterdir())) == 1
