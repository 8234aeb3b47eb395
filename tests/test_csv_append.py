"""The CSV log says whether this run's rows were added to rows already there (for "N rows added to FILE")."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from device.config import LogConfig
from device.csvlog import CsvLog
from device.frames import Box, Face, Frame

LABELS = ("neg", "pos")


def log_frames(path, frames: int) -> CsvLog:
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    for i in range(frames):
        face = Face(1, Box(0, 0, 10, 10), 0.9, np.array([0.2, 0.8]), "pos", 0.8)
        log.write(Frame(np.zeros((1, 1, 3), np.uint8), i, "cam", datetime.now(timezone.utc)), [face])
    log.close()
    return log


def test_a_new_file_is_not_appended_to_and_an_existing_one_is(tmp_path):
    path = tmp_path / "rows.csv"
    first = log_frames(path, 3)
    assert (first.appended, first.rows_written) == (False, 3)
    second = log_frames(path, 2)
    assert (second.appended, second.rows_written) == (True, 2)  # "2 rows added to rows.csv"
    assert len(path.read_text().splitlines()) == 1 + 5


def test_a_file_holding_only_the_header_is_not_counted_as_appended_to(tmp_path):
    path = tmp_path / "rows.csv"
    log_frames(path, 0)
    assert path.read_text().count("\n") == 1  # the header alone
    assert log_frames(path, 1).appended is False


def test_a_reopen_of_this_runs_own_file_is_not_an_append(tmp_path):
    """SIGHUP reopens the log (logrotate): the rows found there are this run's, so the done line says 'CSV rows'."""
    path = tmp_path / "rows.csv"
    log = CsvLog(LogConfig(csv=str(path)), LABELS)
    face = Face(1, Box(0, 0, 10, 10), 0.9, np.array([0.2, 0.8]), "pos", 0.8)
    log.write(Frame(np.zeros((1, 1, 3), np.uint8), 0, "cam", datetime.now(timezone.utc)), [face])
    log.reopen()
    log.write(Frame(np.zeros((1, 1, 3), np.uint8), 1, "cam", datetime.now(timezone.utc)), [face])
    log.close()
    assert (log.appended, log.rows_written) == (False, 2)
