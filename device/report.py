"""``python -m device report LOG.csv [MORE.csv|FOLDER ...] --out DIR``: plots and a summary of CSV logs.

The logs are streamed row by row (the csv module) into fixed-size tallies, so a month-long log
(millions of rows) needs memory in proportion to its duration in minutes and its number of
tracks, never to its rows.  Two passes: the first tallies everything and finds the longest
tracks; the second keeps those tracks' label changes for the timeline plot.

- Rotated logs: a folder stands for its ``emotions-YYYY-MM-DD[.N].csv`` files, and rotated files
  are read in date and sequence order; a run continues across them.
- Several runs appended to one file: a run starts where the ``run`` column changes, or (logs
  without that column) where the frame number starts again.
- Output: ``tracks.png``, ``shares.png``, ``faces.png``, ``distribution.png`` and ``index.html``
  (the plots and a table: runs, duration, frames, faces, class shares), each written to a
  temporary file and renamed.
- Honest at any duration, from seconds to months: a label segment lasts from its first row to the
  track's next row (one frame interval past its last one), never a fixed minimum width; the time axes
  span the data's bins and no more; time between runs is a gap, not a line.
"""

from __future__ import annotations

import csv
import html
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from device.csvlog import FIXED, ROTATED
from device.errors import DeviceError
from device.manifest import write_atomic
from device.progress import Progress

log = logging.getLogger(__name__)

TIMELINE_TRACKS = 12  # the longest tracks get a timeline row each
GAP = 5.0  # s: a track unseen this long has paused; its label segment ends one frame after its last row
HOURLY_AFTER = 6 * 3600  # class shares per hour (rather than per minute) for logs longer than this
PLOTS = ("tracks", "shares", "faces", "distribution")


class ReportError(DeviceError):
    exit_code = 65  # EX_DATAERR; 73 (EX_CANTCREAT) when the output cannot be written

    def __init__(self, message: str, exit_code: int = 65):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Run:
    name: str  # the run column, or the first timestamp
    start: float = float("inf")
    end: float = float("-inf")
    first_frame: int = 0
    last_frame: int = 0
    faces: int = 0  # rows: one per face per frame
    tracks: set = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    @property
    def frames(self) -> int:
        return self.last_frame - self.first_frame + 1

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def frame_interval(self) -> float:
        """Seconds from one frame to the next, on average (0 for a run of one frame)."""
        return self.duration / (self.frames - 1) if self.frames > 1 else 0.0


@dataclass
class Tally:
    labels: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)
    rows: int = 0
    bad_rows: int = 0
    minute_counts: dict[int, np.ndarray] = field(default_factory=dict)  # minute -> faces per class
    minute_tracks: Counter = field(default_factory=Counter)  # minute -> distinct tracks
    track_rows: Counter = field(default_factory=Counter)  # (run index, track) -> rows
    timelines: dict[tuple[int, str], list[list]] = field(default_factory=dict)  # -> [[start, end, class], ...]

    def counts(self) -> np.ndarray:
        return sum((np.array([r.counts[k] for k in range(len(self.labels))]) for r in self.runs),
                   np.zeros(len(self.labels), dtype=np.int64))


# -- reading -----------------------------------------------------------------------------------------


def log_files(paths: list[str | Path]) -> list[Path]:
    """Files in reading order: folders expand to their rotated logs; rotated names sort by date and number."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in p.iterdir() if ROTATED.match(f.name)]
            if not found:
                raise ReportError(f"{p}: no emotions-YYYY-MM-DD.csv logs in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ReportError(f"{p}: no such file or folder")

    def key(item: tuple[int, Path]):
        i, f = item
        m = ROTATED.match(f.name)
        return (0, m.group(1), int(m.group(2) or 0), i) if m else (1, "", 0, i)

    return [f for _, f in sorted(enumerate(files), key=key)]


def read_header(path: Path) -> tuple[bool, tuple[str, ...]]:
    """(has a run column, labels) from the header; a ReportError when it is not this program's log."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path}: cannot read it as a CSV log: {exc}") from None
    has_run = header[1:2] == ["run"]
    fixed = FIXED if has_run else [c for c in FIXED if c != "run"]  # logs from before the run column
    probs = header[len(fixed):]
    if header[:len(fixed)] != fixed or not probs or not all(p.startswith("p_") for p in probs):
        raise ReportError(f"{path} is not an emotion-device CSV log (its header starts "
                          f"{','.join(header[:4])!r}; expected {','.join(FIXED[:4])!r}...,p_<label>...)")
    return has_run, tuple(p[2:] for p in probs)


class _Clock:
    """ISO-8601 UTC stamps -> epoch seconds, parsing the date only when the minute changes."""

    def __init__(self):
        self._prefix, self._minute = "", 0.0

    def __call__(self, stamp: str) -> tuple[float, int]:
        prefix = stamp[:16]  # 2026-12-02T06:27
        if prefix != self._prefix:
            try:
                dt = datetime.fromisoformat(prefix).replace(tzinfo=timezone.utc)
            except ValueError:
                raise ValueError(f"bad timestamp {stamp!r}") from None
            self._prefix, self._minute = prefix, dt.timestamp()
        seconds = float(stamp[17:23]) if len(stamp) > 18 else 0.0
        return self._minute + seconds, int(self._minute // 60)


def _readers(files: list[Path], progress: Progress, done: int = 0) -> Iterator[tuple[int, Iterator[list[str]]]]:
    """(column shift: 1 with a run column, else 0, csv rows) per file, with progress by bytes read."""
    for path in files:
        has_run, _ = read_header(path)
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            next(reader, None)

            def rows() -> Iterator[list[str]]:
                for i, row in enumerate(reader):
                    if not i & 0x3FFF:
                        progress.update(done + f.buffer.tell())
                    yield row

            yield (1 if has_run else 0), rows()
        done += path.stat().st_size


def tally(paths: list[str | Path], tracks: int = TIMELINE_TRACKS, show_progress: bool | None = None) -> Tally:
    """Both passes over the logs."""
    files = log_files(paths)
    headers = {f: read_header(f) for f in files}  # every file checked before the long read
    labels = next(iter(headers.values()))[1]
    if any(other != labels for _, other in headers.values()):
        # Logs from before and after a model with other classes (7 FER2013 labels, then FER+'s 8): the
        # rows' labels are counted by name, over every class that any of the files has.
        labels = tuple(sorted({name for _, other in headers.values() for name in other}))
        log.info("the logs come from models with different classes; reporting all %d: %s", len(labels),
                 ", ".join(labels))
    result = Tally(labels)
    total = 2 * sum(f.stat().st_size for f in files)
    progress = Progress(total, " MB", "report: ", enabled=show_progress, scale=1e6)
    try:
        _first_pass(result, _readers(files, progress))
        longest = {key for key, _ in result.track_rows.most_common(tracks)}
        _second_pass(result, _readers(files, progress, total // 2), longest)
    finally:
        progress.close()
    if not result.rows:
        raise ReportError(f"{', '.join(map(str, files))}: no rows (no face was ever logged)")
    if result.bad_rows:
        log.warning("skipped %d malformed rows", result.bad_rows)
    return result


class _Frames:
    """Per-frame state shared by the rows of one frame: time, minute, and where runs start.

    A run starts where the run column changes or, without one, where the frame number goes back."""

    def __init__(self):
        self.clock = _Clock()
        self.key = None  # (timestamp, run, frame) of the current frame
        self.frame = -1
        self.run_id: str | None = None
        self.runs = 0
        self.now, self.minute = 0.0, 0
        self.new_run = False

    def update(self, row: list[str], shift: int) -> None:
        """Called when a row's frame differs from the last one; ValueError/IndexError on a bad row."""
        frame = int(row[1 + shift])
        now, minute = self.clock(row[0])
        run_id = row[1] if shift else None
        self.new_run = self.runs == 0 or (run_id != self.run_id if shift else frame < self.frame)
        self.runs += self.new_run
        self.frame, self.run_id, self.now, self.minute = frame, run_id, now, minute
        self.key = (row[0], row[1], row[1 + shift])


def _first_pass(t: Tally, readers: Iterator[tuple[int, Iterator[list[str]]]]) -> None:
    index = {label: i for i, label in enumerate(t.labels)}
    frames = _Frames()
    run: Run | None = None
    run_counts: list[int] = []
    minute, minute_set, counts = None, set(), None
    for shift, rows in readers:
        for row in rows:
            try:
                if (row[0], row[1], row[1 + shift]) != frames.key:
                    frames.update(row, shift)
                    if frames.new_run:
                        if run is not None:
                            run.counts.update(dict(enumerate(run_counts)))
                        run = Run(name=frames.run_id or row[0], first_frame=frames.frame, start=frames.now)
                        run_counts = [0] * len(t.labels)
                        t.runs.append(run)
                    run.start, run.end = min(run.start, frames.now), max(run.end, frames.now)
                    run.last_frame = max(run.last_frame, frames.frame)
                    if frames.minute != minute:
                        if minute is not None:
                            t.minute_tracks[minute] += len(minute_set)
                        minute, minute_set = frames.minute, set()
                        counts = t.minute_counts.setdefault(minute, [0] * len(t.labels))
                track = row[3 + shift]
                label = index[row[8 + shift]]
            except (IndexError, ValueError, KeyError):
                if row and row[0] != "timestamp":  # not a header of a file appended with cat
                    t.bad_rows += 1
                continue
            key = (frames.runs - 1, track)
            run.faces += 1
            run.tracks.add(track)
            run_counts[label] += 1
            counts[label] += 1
            t.track_rows[key] += 1
            minute_set.add(key)
    if run is not None:
        run.counts.update(dict(enumerate(run_counts)))
    if minute is not None:
        t.minute_tracks[minute] += len(minute_set)
    t.rows = sum(r.faces for r in t.runs)
    t.minute_counts = {m: np.array(c, dtype=np.int64) for m, c in t.minute_counts.items()}


def _second_pass(t: Tally, readers: Iterator[tuple[int, Iterator[list[str]]]], wanted: set) -> None:
    """The label changes of the wanted tracks: [start, end, class] segments.  A label holds from its row to
    the track's next row; after the last row of a stretch (the track ends, or pauses for GAP), for one frame
    interval of its run."""
    index = {label: i for i, label in enumerate(t.labels)}
    frames = _Frames()
    wanted_tracks = {track for _, track in wanted}
    last: dict[tuple[int, str], float] = {}  # the time of each track's last row
    for shift, rows in readers:
        for row in rows:
            try:
                if (row[0], row[1], row[1 + shift]) != frames.key:
                    frames.update(row, shift)
                track = row[3 + shift]
                if track not in wanted_tracks:
                    continue
                key = (frames.runs - 1, track)
                if key not in wanted:
                    continue
                label = index[row[8 + shift]]
            except (IndexError, ValueError, KeyError):
                continue
            now = frames.now
            segments = t.timelines.setdefault(key, [])
            if segments and now - last[key] < GAP:
                segments[-1][1] = now  # the label shown since the last row held until this one
                if segments[-1][2] != label:
                    segments.append([now, now, label])
            else:
                if segments:
                    segments[-1][1] += t.runs[key[0]].frame_interval
                segments.append([now, now, label])
            last[key] = now
    for (run, _), segments in t.timelines.items():
        segments[-1][1] += t.runs[run].frame_interval


# -- plots and page ----------------------------------------------------------------------------------


def _days(seconds) -> np.ndarray:
    """Epoch seconds -> matplotlib's date numbers (days since 1970)."""
    return np.asarray(seconds, dtype="float64") / 86400.0


def _unit(seconds: float) -> tuple[str, float]:
    """A unit for a span of time: (name, seconds in it)."""
    for above, name, per in ((2 * 86400, "d", 86400.0), (2 * 3600, "h", 3600.0), (120, "min", 60.0)):
        if seconds > above:
            return name, per
    return "s", 1.0


def _time_axis(ax, start: float, end: float) -> None:
    """An x axis of UTC dates over exactly [start, end] (epoch seconds), its ticks fit for the span."""
    import matplotlib.dates as mdates
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlim(_days(start), _days(end))
    ax.set_xlabel("UTC")


def _covered(t: Tally, first: int, count: int) -> np.ndarray:
    """Which of ``count`` minutes from minute ``first`` fall inside a run (the others are between runs)."""
    inside = np.zeros(count, dtype=bool)
    for r in t.runs:
        inside[int(r.start // 60) - first:int(r.end // 60) - first + 1] = True
    return inside


def figures(t: Tally) -> dict:
    """The plots as matplotlib figures, by name (``plot_all`` saves and closes them)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    figs = {}

    # each track's emotion over time: one row per track, coloured by the shown class, each from its own
    # start (tracks minutes long in a month-long log would be slivers on a shared time axis)
    keys = sorted(t.timelines, key=lambda k: t.timelines[k][0][0])
    longest = max(t.timelines[k][-1][1] - t.timelines[k][0][0] for k in keys)
    unit, per = _unit(longest)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(keys) + 1.6))
    for row, key in enumerate(keys):
        t0 = t.timelines[key][0][0]
        for k in range(len(t.labels)):
            bars = [((s - t0) / per, (e - s) / per) for s, e, c in t.timelines[key] if c == k]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), color=colors[k % 10])
    ax.set_yticks(range(len(keys)), [f"run {r + 1} track {tr}, {_stamp(t.timelines[(r, tr)][0][0])[:16]}"
                                     for r, tr in keys], fontsize=8)
    ax.set_xlabel(f"{unit} since the track appeared")
    ax.set_xlim(0, longest / per if longest > 0 else 1.0)
    ax.set_title(f"Emotion over time: the {len(keys)} longest tracks" if len(t.track_rows) > len(keys)
                 else "Emotion over time, per track")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[k % 10]) for k in range(len(t.labels))],
              labels=list(t.labels), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    figs["tracks"] = fig

    # share of each class per minute, or per hour for long logs
    minutes = np.array(sorted(t.minute_counts))
    span = (minutes[-1] - minutes[0]) * 60
    step = 60 if span > HOURLY_AFTER else 1
    first = minutes[0] // step
    counts = np.zeros((minutes[-1] // step - first + 1, len(t.labels)))  # every bin, empty ones too
    for m in minutes:
        counts[m // step - first] += t.minute_counts[int(m)]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    edges = (first + np.arange(len(counts) + 1)) * step * 60
    shares = np.vstack([shares, shares[-1:]])  # the last bin gets its width
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.stackplot(_days(edges), shares.T, labels=t.labels, colors=[colors[k % 10] for k in range(len(t.labels))],
                 step="post", linewidth=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of faces")
    ax.set_title(f"Class share per {'hour' if step == 60 else 'minute'}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    _time_axis(ax, edges[0], edges[-1])
    figs["shares"] = fig

    # faces per minute (distinct tracks seen in each minute): 0 in a run's minutes without a face, nothing
    # between runs (the device was not running)
    first = int(min(r.start for r in t.runs) // 60)
    count = int(max(r.end for r in t.runs) // 60) - first + 1
    values = np.array([t.minute_tracks.get(first + i, 0) for i in range(count)], dtype=float)
    values[~_covered(t, first, count)] = np.nan
    edges = (first + np.arange(count + 1)) * 60
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.stairs(values, _days(edges), baseline=None)
    ax.set_ylabel("faces (tracks)")
    ax.set_title("Faces per minute")
    ax.set_ylim(0, max(1.0, float(np.nanmax(values))) * 1.1)
    _time_axis(ax, edges[0], edges[-1])
    figs["faces"] = fig

    # the overall distribution
    total = t.counts()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    share = total / max(total.sum(), 1)
    ax.bar(t.labels, share, color=[colors[k % 10] for k in range(len(t.labels))])
    for k, v in enumerate(share):
        ax.text(k, v, f"{100 * v:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("share of faces")
    ax.set_title(f"Overall class distribution ({int(total.sum()):,} face observations)")
    figs["distribution"] = fig
    return figs


def plot_all(t: Tally, out: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    figs = figures(t)
    try:
        for name, fig in figs.items():
            fig.tight_layout()
            tmp = out / f".{name}.png.tmp"
            fig.savefig(tmp, dpi=90, format="png")
            os.replace(tmp, out / f"{name}.png")
            written[name] = out / f"{name}.png"
    finally:
        for fig in figs.values():
            plt.close(fig)
    return written


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days = f"{seconds // 86400} d " if seconds >= 86400 else ""
    return f"{days}{seconds // 3600 % 24}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def summary_rows(t: Tally) -> list[list[str]]:
    """The table: one row per run and a total, as text."""
    rows = []
    for i, r in enumerate(t.runs):
        counts = np.array([r.counts[k] for k in range(len(t.labels))])
        shares = counts / max(counts.sum(), 1)
        rows.append([str(i + 1), _stamp(r.start), _duration(r.duration), f"{r.frames:,}", f"{r.faces:,}",
                     f"{len(r.tracks):,}", *(f"{100 * s:.1f}%" for s in shares)])
    total = t.counts()
    rows.append(["all", _stamp(min(r.start for r in t.runs)), _duration(sum(r.duration for r in t.runs)),
                 f"{sum(r.frames for r in t.runs):,}", f"{t.rows:,}", f"{sum(len(r.tracks) for r in t.runs):,}",
                 *(f"{100 * s:.1f}%" for s in total / max(total.sum(), 1))])
    return rows


def render_html(t: Tally, files: list[Path], plots: dict[str, Path]) -> str:
    head = ["run", "start (UTC)", "duration", "frames", "faces", "tracks", *t.labels]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n"
                    for row in summary_rows(t))
    images = "".join(f'<figure><img src="{p.name}" alt="{name}"></figure>\n' for name, p in plots.items())
    note = f"<p>{t.bad_rows:,} malformed rows skipped.</p>" if t.bad_rows else ""
    sources = ", ".join(html.escape(str(f)) for f in files)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion log report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}tr:last-child{{font-weight:bold}}
img{{max-width:100%}}</style></head><body>
<h1>Emotion log report</h1>
<p>{len(t.runs)} run(s), {t.rows:,} face observations from {sources}.
Faces are rows of the log (one per face per frame); tracks are faces followed across frames.</p>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>
{table}</table>{note}
{images}</body></html>
"""


def report(paths: list[str | Path], out: str | Path, tracks: int = TIMELINE_TRACKS,
           show_progress: bool | None = None) -> Path:
    """Plots and ``index.html`` for the logs in ``out``; returns the page's path."""
    out = Path(out)
    files = log_files(paths)
    t = tally(files, tracks, show_progress)
    page = out / "index.html"
    try:
        plots = plot_all(t, out)
        write_atomic(page, render_html(t, files, plots).encode())
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc.strerror or exc}", 73) from None
    log.info("%d runs, %d rows, %d tracks: %s", len(t.runs), t.rows, len(t.track_rows), page)
    return page
