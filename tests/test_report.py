"""``python -m device report``: tallies checked against the rows written, runs, rotation, bad input."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from device.csvlog import FIXED, columns, format_rows
from device.frames import Box, Face, Frame
from device.report import ReportError, log_files, report, summary_rows, tally

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def faces_for(i: int, rng) -> list[Face]:
    """Track 1 always (happy, then sad from frame 40); track 2 on even frames (neutral)."""
    out = [Face(1, Box(10, 10, 40, 40), 0.9, rng.dirichlet(np.ones(7)), "happy" if i < 40 else "sad", 0.8)]
    if i % 2 == 0:
        out.append(Face(2, Box(90, 10, 40, 40), 0.9, rng.dirichlet(np.ones(7)), "neutral", 0.7))
    return out


def write(path: Path, frames: range, start: datetime, header: bool = True, seconds: float = 1.0,
          run: str | None = None) -> Counter:
    """Rows in the CSV log's own format (a 1 fps camera), or without its run column (logs written before it
    existed) when ``run`` is None; returns the labels written."""
    rng = np.random.default_rng(len(frames))
    labels: Counter = Counter()
    with open(path, "a") as f:
        if header:
            cols = columns(LABELS)
            f.write(",".join(cols if run else [c for c in cols if c != "run"]) + "\n")
        for i in frames:
            faces = faces_for(i, rng)
            text = format_rows(Frame(np.zeros((1, 1, 3), np.uint8), i, "cam", start + timedelta(seconds=i * seconds)),
                               faces, run or "NORUN")
            if not run:
                text = text.replace(",NORUN,", ",")
            f.write(text)
            labels.update(face.label for face in faces)
    return labels


def test_two_runs_appended_to_one_file(tmp_path):
    log = tmp_path / "log.csv"
    first = write(log, range(0, 100), T0)
    second = write(log, range(0, 30), T0 + timedelta(hours=2), header=False)  # frame numbers restart
    t = tally([log], show_progress=False)
    assert len(t.runs) == 2
    assert [r.frames for r in t.runs] == [100, 30]
    assert [r.faces for r in t.runs] == [150, 45]
    assert [len(r.tracks) for r in t.runs] == [2, 2]
    assert [round(r.duration) for r in t.runs] == [99, 29]
    expected = first + second
    assert dict(zip(LABELS, t.counts().tolist())) == {k: expected.get(k, 0) for k in LABELS}
    assert t.rows == 195 and t.bad_rows == 0
    # faces per minute: both tracks in each minute of run 1 (100 s: minutes 0 and 1) and run 2
    assert sorted(t.minute_tracks.values()) == [2, 2, 2]
    total = summary_rows(t)[-1]
    assert total[:6] == ["all", "2026-03-01 09:00:00", "0:02:08", "130", "195", "4"]
    assert total[6 + LABELS.index("happy")] == f"{100 * expected['happy'] / 195:.1f}%"


def test_run_column_splits_runs_and_timeline_follows_labels(tmp_path):
    log = tmp_path / "log.csv"
    write(log, range(0, 60), T0, run="2026-03-01T09:00:00Z")
    write(log, range(60, 80), T0 + timedelta(minutes=5), header=False, run="2026-03-01T09:05:00Z")
    t = tally([log], tracks=1, show_progress=False)
    assert [r.name for r in t.runs] == ["2026-03-01T09:00:00Z", "2026-03-01T09:05:00Z"]
    assert [r.frames for r in t.runs] == [60, 20]
    # the longest track is run 1's track 1: happy for frames 0-39, then sad for 40-59 (1 s a frame: until 60 s)
    assert list(t.timelines) == [(0, "1")]
    segments = t.timelines[(0, "1")]
    start = T0.timestamp()
    assert [(round(s - start), round(e - start), LABELS[c]) for s, e, c in segments] == \
        [(0, 40, "happy"), (40, 60, "sad")]


def test_rotated_logs_are_read_in_order_as_one_run(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder / "emotions-2026-03-01.csv", range(0, 10), T0)
    write(folder / "emotions-2026-03-01.1.csv", range(10, 20), T0)
    write(folder / "emotions-2026-03-01.2.csv", range(20, 30), T0)
    write(folder / "emotions-2026-03-01.10.csv", range(30, 40), T0)
    write(folder / "emotions-2026-03-02.csv", range(40, 50), T0)
    (folder / "notes.txt").write_text("not a log")
    assert [f.name for f in log_files([folder])] == [
        "emotions-2026-03-01.csv", "emotions-2026-03-01.1.csv", "emotions-2026-03-01.2.csv",
        "emotions-2026-03-01.10.csv", "emotions-2026-03-02.csv"]
    t = tally([folder], show_progress=False)
    assert len(t.runs) == 1 and t.runs[0].frames == 50 and t.rows == 75


def test_report_writes_the_page_and_plots(tmp_path):
    import matplotlib.image
    log = tmp_path / "log.csv"
    write(log, range(0, 200), T0, seconds=30)  # 100 minutes: shares per minute
    page = report([log], tmp_path / "out", show_progress=False)
    text = page.read_text()
    for name in ("tracks", "shares", "faces", "distribution"):
        image = matplotlib.image.imread(tmp_path / "out" / f"{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 300
        assert f'src="{name}.png"' in text
    assert "<td>300</td>" in text  # faces: 200 + 100
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_not_a_log_is_one_clear_error(tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("name,score\nx,1\n")
    with pytest.raises(ReportError, match="not an emotion-device CSV log"):
        tally([bad], show_progress=False)
    result = subprocess.run([sys.executable, "-m", "device", "report", str(bad), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 65
    assert result.stderr.strip().splitlines() == [f"error: {bad} is not an emotion-device CSV log (its header "
                                                  f"starts 'name,score'; expected '{','.join(FIXED[:4])}'...,"
                                                  "p_<label>...)"]
    assert not (tmp_path / "o").exists()


def test_logs_before_and_after_an_upgrade_to_eight_classes_are_reported_together(tmp_path):
    """A 7-label log renamed aside at an upgrade, and the 8-label log after it: one report over all 8 classes."""
    old, new = tmp_path / "log.7-labels-until-20260301T091000Z.csv", tmp_path / "log.csv"
    before = write(old, range(0, 50), T0, run="2026-03-01T09:00:00.000Z")
    eight = ("angry", "contempt", *LABELS[1:])
    with open(new, "w") as f:
        f.write(",".join(columns(eight)) + "\n")
        for i in range(20):
            label = "contempt" if i < 5 else "neutral"
            face = Face(1, Box(10, 10, 40, 40), 0.9, np.eye(8)[eight.index(label)], label, 1.0)
            frame = Frame(np.zeros((1, 1, 3), np.uint8), i, "cam", T0 + timedelta(minutes=20, seconds=i))
            f.write(format_rows(frame, [face], "2026-03-01T09:20:00.000Z"))
    t = tally([old, new], show_progress=False)
    assert t.labels == eight and len(t.runs) == 2
    expected = {**{k: before.get(k, 0) for k in eight}, "contempt": 5}
    expected["neutral"] += 15
    assert dict(zip(eight, t.counts().tolist())) == expected


def test_unwritable_output_is_one_clear_error(tmp_path):
    log = tmp_path / "log.csv"
    write(log, range(0, 5), T0)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder would go")
    result = subprocess.run([sys.executable, "-m", "device", "report", str(log), "--out", str(blocker / "out")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 73
    expected = f"error: cannot write the report to {blocker / 'out'}: Not a directory"
    assert result.stderr.strip().splitlines() == [expected]


# -- plots honest at any duration -------------------------------------------------------------------------------


def write_track(path: Path, labels: list[str], start: datetime, seconds: float, run: str, header: bool = True,
                second_face: range = range(0)) -> None:
    """One face (track 1) with the given label per frame, one frame every ``seconds``; track 2 on the frames of
    ``second_face``."""
    with open(path, "a") as f:
        if header:
            f.write(",".join(columns(LABELS)) + "\n")
        for i, label in enumerate(labels):
            p = np.eye(len(LABELS))[LABELS.index(label)]
            faces = [Face(1, Box(10, 10, 40, 40), 0.9, p, label, 1.0)]
            if i in second_face:
                faces.append(Face(2, Box(90, 10, 40, 40), 0.9, np.eye(len(LABELS))[4], "neutral", 1.0))
            frame = Frame(np.zeros((1, 1, 3), np.uint8), i, "cam", start + timedelta(seconds=i * seconds))
            f.write(format_rows(frame, faces, run))


def plots(log: Path | list[Path]):
    from device.report import figures
    return figures(tally(log if isinstance(log, list) else [log], show_progress=False))


def bars_by_color(ax) -> dict[tuple, list[tuple[float, float]]]:
    """The broken_barh rectangles of a timeline row as (start, width), by face colour."""
    out: dict[tuple, list[tuple[float, float]]] = {}
    for collection in ax.collections:
        color = tuple(np.round(collection.get_facecolor()[0][:3], 3))
        for path in collection.get_paths():
            xs = path.vertices[:, 0]
            out.setdefault(color, []).append((float(xs.min()), float(xs.max() - xs.min())))
    return out


def close(figs) -> None:
    import matplotlib.pyplot as plt
    for fig in figs.values():
        plt.close(fig)


def tick_range_ok(ax) -> bool:
    lo, hi = ax.get_xlim()
    ticks = [x for x in ax.xaxis.get_major_locator()() if lo <= x <= hi]
    return 3 <= len(ticks) <= 15


def test_a_ten_second_log_is_drawn_to_scale(tmp_path):
    """Every segment was drawn at least 0.5 s wide, and faces per minute ran on an axis from 2024 to 2030."""
    log = tmp_path / "short.csv"
    labels = ["happy"] * 50 + ["sad"] * 2 + ["happy"] * 48  # 10 frames a second: a 0.2 s episode of sad
    write_track(log, labels, T0 + timedelta(seconds=20), 0.1, "R1", second_face=range(20, 30))
    figs = plots(log)
    try:
        ax = figs["tracks"].axes[0]
        assert ax.get_xlabel() == "s since the track appeared" and ax.get_xlim() == (0.0, pytest.approx(10.0))
        happy, sad, neutral = (tuple(np.round(plt_color(k), 3)) for k in ("happy", "sad", "neutral"))
        bars = bars_by_color(ax)
        assert [(round(s, 3), round(w, 3)) for s, w in bars[sad]] == [(5.0, 0.2)]
        assert [(round(s, 3), round(w, 3)) for s, w in bars[happy]] == [(0.0, 5.0), (5.2, 4.8)]
        assert [(round(s, 3), round(w, 3)) for s, w in bars[neutral]] == [(0.0, 1.0)]  # track 2: 1 s
        for name in ("faces", "shares"):  # the one minute the log falls in, not years
            ax = figs[name].axes[0]
            lo, hi = ax.get_xlim()
            assert lo == pytest.approx(T0.timestamp() / 86400) and hi - lo == pytest.approx(1 / 1440), name
            assert tick_range_ok(ax), name
        (stairs,) = figs["faces"].axes[0].patches
        assert stairs.get_data().values.tolist() == [2.0]
    finally:
        close(figs)


def plt_color(label: str) -> tuple:
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10").colors[LABELS.index(label)]


def test_the_time_between_two_runs_is_a_gap(tmp_path):
    log = tmp_path / "two.csv"
    write_track(log, ["happy"] * 120, T0, 1.0, "R1")  # 09:00-09:02
    write_track(log, ["sad"] * 120, T0 + timedelta(hours=2), 1.0, "R2", header=False)  # 11:00-11:02
    figs = plots(log)
    try:
        ax = figs["faces"].axes[0]
        (stairs,) = ax.patches
        values, edges = stairs.get_data().values, stairs.get_data().edges
        assert len(values) == 122 and edges[0] == pytest.approx(T0.timestamp() / 86400)
        assert values[:2].tolist() == [1.0, 1.0] and values[120:].tolist() == [1.0, 1.0]
        assert np.isnan(values[2:120]).all()  # not a line across the two hours between the runs
        assert ax.get_xlim() == (pytest.approx(edges[0]), pytest.approx(edges[-1]))
    finally:
        close(figs)


def test_a_month_long_log_is_drawn_to_scale(tmp_path):
    """One frame every 10 minutes for 30 days, one face throughout, sad for one frame on day 15."""
    log = tmp_path / "month.csv"
    frames = 30 * 24 * 6
    labels = ["happy"] * frames
    labels[15 * 144] = "sad"
    write_track(log, labels, T0, 600.0, "R1")
    figs = plots(log)
    try:
        ax = figs["tracks"].axes[0]
        assert ax.get_xlabel() == "d since the track appeared"
        assert ax.get_xlim() == (0.0, pytest.approx(30.0))  # 4320 frames of 10 minutes
        (sad,) = bars_by_color(ax)[tuple(np.round(plt_color("sad"), 3))]
        assert sad == (pytest.approx(15.0), pytest.approx(600 / 86400))  # one frame: 10 minutes, in days
        end = T0.timestamp() + (frames - 1) * 600 + 60  # the last row's minute, to its end
        for name in ("faces", "shares"):
            ax = figs[name].axes[0]
            lo, hi = ax.get_xlim()
            assert lo == pytest.approx(T0.timestamp() / 86400), name
            bin_end = end if name == "faces" else (end // 3600 + 1) * 3600  # shares: hourly bins
            assert hi == pytest.approx(bin_end / 86400), name
            assert tick_range_ok(ax), name
        assert figs["shares"].axes[0].get_title() == "Class share per hour"
        (stairs,) = figs["faces"].axes[0].patches
        values = stairs.get_data().values
        assert len(values) == 30 * 1440 - 9 and np.nansum(values) == frames and not np.isnan(values).any()
    finally:
        close(figs)
