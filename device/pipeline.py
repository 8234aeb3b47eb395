"""The composition root: source -> detect -> classify -> track -> overlay -> sink, and the CSV log.

One loop, one frame at a time, each stage timed; with more than one worker
(``--workers``) device.runner runs step()'s three parts (read, detect, finish)
on their own threads, and the loop below is unchanged.  A stop event (set by a
signal handler) ends it cleanly after the current frame, and a reload event
(SIGHUP) swaps in a new config and model between two frames.  A camera that
is missing at start or fails later is reopened with backoff (device.reconnect).
Output paths are checked before the camera opens, and the CSV is created only
once the source is open.  Everything below this module is handed what it needs:
nothing imports it but the commands that run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from device import csvlog, health, outpaths, overlay, sinks
from device.classifier import EmotionClassifier
from device.config import Config
from device.csvlog import CsvLog
from device.errors import DeviceError, SourceError, WriteError
from device.facecrops import FaceCrops
from device.frames import Frame, FrameResult
from device.pacing import pace
from device.progress import Progress
from device.reconnect import reconnect
from device.results import ResultSinks
from device.runner import Runner, workers_for
from device.scheduler import ScheduledDetector, open_detector
from device.sinks import Sink, open_sink
from device.sources import FrameSource, is_live, open_source
from device.stages import STAGES, Stats, Work
from device.tracker import Tracker

log = logging.getLogger(__name__)


class Notifier:
    """Service hooks (systemd sd_notify in device.service); this one does nothing."""

    def ready(self) -> None: ...

    def watchdog(self) -> None: ...

    def status(self, text: str) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...


def _open_detector(config: Config) -> ScheduledDetector:
    """With more than one worker the full detections run ahead on a thread of their own (device.scheduler)."""
    return open_detector(config.detector, ahead=workers_for(config.run.workers) > 1)


class Pipeline:
    def __init__(self, config: Config, notifier: Notifier | None = None, stop: threading.Event | None = None):
        self.config = config
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.started_at = datetime.now(timezone.utc)  # the CSV's run column
        self.records: list[dict[str, float]] | None = None  # per-frame stage timings, for bench
        self._stop = stop or threading.Event()
        self._quit = False
        self._first_frame: Frame | None = None  # read while waiting for a camera at start
        self.face_crops = FaceCrops(config.output.faces_dir) if config.output.faces_dir else None
        self._runner: Runner | None = None  # device.runner's threads, while run() uses them
        self.before_reconnect: Callable[[], None] = lambda: None  # the runner waits here for frames in flight
        self.detector: ScheduledDetector | None = None  # set below; None lets close() run after a failed start
        self.csv: CsvLog | None = None
        self.source: FrameSource | None = None
        self.sink: Sink | None = None
        self.results = ResultSinks()  # MQTT, web view: consumers beside the CSV log (off by default)
        self.progress: Progress | None = None  # the terminal's progress line during run()
        try:
            # The model first: a missing model is a config problem (exit 78), whatever the camera does.
            self.classifier = EmotionClassifier(config.classifier)
            self.detector = _open_detector(config)
            self.tracker = Tracker(config.tracker, self.classifier.labels)
            self._check_outputs()  # an unwritable path is exit 73 before the camera opens
            self.source = None if self._stop.is_set() else self._open_source()
            if self.source is None:  # stopped during start-up or while waiting for the camera: open nothing more
                return
            # after the source: a run that fails on its source leaves no header-only CSV behind
            self.csv = CsvLog(config.log, self.classifier.labels, self.started_at) if config.log.csv else None
            self.sink = open_sink(config.output, self.source, float(config.source.fps))
            self.results = self._open_results()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.close()
            raise

    def _check_outputs(self) -> None:
        if self.config.log.csv:
            csvlog.check_target(self.config.log, self.classifier.labels)
        sinks.check_target(self.config.output)
        if self.config.output.faces_dir:
            outpaths.check_dir(self.config.output.faces_dir, "--save-faces")

    def _open_results(self) -> ResultSinks:
        """The consumers beside the CSV log that the config turns on (none by default)."""
        config, labels = self.config, self.classifier.labels
        results = ResultSinks()
        try:
            if config.mqtt.url:
                from device.mqtt import MqttSink  # paho-mqtt only when asked for
                results.add(MqttSink(config.mqtt, labels, csvlog.utc_stamp(self.started_at)))
            if config.web.serve:
                from device.web import WebView
                annotated = self.sink.needs_overlay and not self.sink.transparent  # frames come drawn on
                results.add(WebView(config.web, labels, config.overlay, annotated,
                                    counters=lambda: {**self._csv_counters(), **results.counters()},
                                    device_id=config.mqtt.device_id or None))
        except BaseException:
            results.close()
            raise
        return results

    def _open_source(self) -> FrameSource | None:
        try:
            return self._open_camera()
        except SourceError as exc:
            if not is_live(self.config.source.uri):
                raise
            self._first_frame = self._reconnect(exc, None)  # a camera not plugged in (yet): wait for it
            return self.source

    def _open_camera(self) -> FrameSource:
        return pace(open_source(self.config.source.uri, self.config.source, self._stop), self.config, self._stop)

    def _reconnect(self, error: SourceError, failed: FrameSource | None) -> Frame | None:
        """The source reopened with backoff (device.reconnect); its first frame, or None once stopped."""
        self.source = None
        self.source, frame = reconnect(error, failed, open_source=self._open_camera, uri=self.config.source.uri,
                                       run=self.config.run, stop=self._stop, status=self.notifier.status)
        if frame is not None:
            self.stats.reconnects += 1
        return frame

    # -- one frame ---------------------------------------------------------------------------
    # step() = read_stage -> detect_stage -> finish_stage; device.runner calls the three from different
    # threads (each stage is only ever run by one thread at a time, so the stages themselves stay plain).
    def step(self) -> FrameResult | None:
        """Process the next frame; None at the end of a finite source."""
        work = self.read_stage()
        return None if work is None else self.finish_stage(self.detect_stage(work))

    def read_stage(self) -> Work | None:
        t0 = time.perf_counter()
        frame = self._read()
        if self.stats.first_read is None:
            self.stats.first_read = t0
        if frame is None:
            if self.source is not None:  # an unreadable last image counts too
                self.stats.skipped_frames = self.source.skipped
            return None
        self.detector.offer(frame.index, frame.image)
        return Work(frame, {"decode": (time.perf_counter() - t0) * 1000})

    def detect_stage(self, work: Work) -> Work:
        t1 = time.perf_counter()
        work.detections = self.detector.detect(work.frame.image, work.frame.index, work.frame.new_scene)
        work.timings["detect"] = (time.perf_counter() - t1) * 1000
        return work

    def finish_stage(self, work: Work) -> FrameResult:
        """Classify, track, draw, write: everything that has to see the frames in order."""
        frame, detections, t = work.frame, work.detections, work.timings
        t2 = time.perf_counter()
        self.tracker.begin_frame(frame)  # a still image or a new frame size starts a new scene
        matched = self.tracker.match(detections)
        todo = self.tracker.to_classify(detections, matched, self.config.classifier.classify_every)
        probs: list[np.ndarray | None] = [None] * len(detections)
        for i, p in zip(todo, self.classifier.classify(frame.image, [detections[i].box for i in todo])):
            probs[i] = p
        self.stats.classified += len(todo)
        t3 = time.perf_counter()
        faces = self.tracker.update(detections, probs, matched)
        t4 = time.perf_counter()
        keep_going = True
        if self.sink.needs_overlay:
            canvas = np.zeros_like(frame.image) if self.sink.transparent else frame.image
            overlay.draw(canvas, faces, self.classifier.labels, self.config.overlay, self.stats.fps(),
                         self.stats.median_ms() if self.config.overlay.stats else None)
            t5 = time.perf_counter()
            keep_going = self.sink.write(canvas, frame)
        else:
            t5 = t4
        t6 = time.perf_counter()
        if self.face_crops is not None and faces:
            self.face_crops.save(frame, faces, self.classifier.crop)
        if self.csv is not None:
            self.csv.write(frame, faces)
        t7 = time.perf_counter()
        for name, a, b in zip(STAGES[2:], (t2, t3, t4, t5, t6), (t3, t4, t5, t6, t7)):
            t[name] = (b - a) * 1000
        self.stats.add_frame(len(faces), t, t7)
        source = self.source  # None while the reading thread reopens a camera
        if source is not None:
            self.stats.skipped_frames = source.skipped
        if self.records is not None:
            self.records.append(t)
        self.notifier.watchdog()  # only while frames flow
        if not keep_going:
            self._quit = True
        result = FrameResult(frame, faces, t)
        self.results.publish(result, self.stats)  # never blocks: each consumer queues or keeps the latest
        return result

    def _read(self) -> Frame | None:
        """The next frame; a failing live source is reopened with backoff until the timeout."""
        if self._first_frame is not None:
            frame, self._first_frame = self._first_frame, None
            return frame
        if self.source is None:  # stopped while waiting for the camera
            return None
        try:
            return self.source.read()
        except SourceError as exc:
            if not self.source.live:
                raise
            self.before_reconnect()
            return self._reconnect(exc, self.source)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, reload: threading.Event | None = None,
            load_config: Callable[[], Config] | None = None) -> Stats:
        """Frames until the source ends, ``max_frames``, or ``stop``; ``reload`` (SIGHUP) reloads between
        frames, with ``load_config()`` (the config file again) or else the current config."""
        if stop is not None:
            self._stop = stop
        max_frames = self.config.run.max_frames
        next_stats = time.monotonic() + self.config.run.stats_interval
        first = True
        progress = self.progress = self._progress()
        runner = self.open_runner()  # None: everything on this thread
        step = runner.step if runner else self.step
        while not self._stop.is_set() and not self._quit:
            if max_frames is not None and self.stats.frames >= max_frames:
                break
            if reload is not None and reload.is_set() and not first:  # READY=1 comes from the first frame
                reload.clear()
                if runner:
                    runner.drain()  # frames already read are finished with the config they were read with
                self.reload(load_config)
            result = step()
            if result is None:
                break
            progress.update(self.stats.frames)
            if first:  # model and camera up, first frame processed
                self.notifier.ready()
                first = False
            if time.monotonic() >= next_stats:
                line = self.health_line()
                log.info("%s", line)
                self.notifier.status(line)
                next_stats = time.monotonic() + self.config.run.stats_interval
        progress.close()
        if runner:
            runner.close()
        return self.stats

    def open_runner(self) -> Runner | None:
        """device.runner's threads for the stages, when there is more than one worker."""
        workers = workers_for(self.config.run.workers)
        runner = self._runner = Runner(self, workers, self._stop, self._frames_left) if workers > 1 else None
        if runner is not None:
            self.before_reconnect = runner.wait_for_frames_in_flight  # a camera that fails waits for its frames
        return runner

    def _frames_left(self) -> int | None:
        limit = self.config.run.max_frames
        return None if limit is None else max(0, limit - self.stats.frames)

    def _progress(self) -> Progress:
        """Frames done of a file's total, on a terminal only (device.progress); cameras get none."""
        total = self.source.total if self.source is not None else None
        if total is not None and self.config.run.max_frames is not None:
            total = min(total, self.config.run.max_frames)
        return Progress(total, " frames", "", enabled=False if total is None else None)

    def health_line(self) -> str:
        return health.health_line(self.stats, self.csv, self.results.health())

    def summary(self) -> str:
        """One line; after close(), so the CSV count is what is on disk."""
        return health.summary(self.stats, self.csv, self.source)

    def failure(self) -> DeviceError | None:
        """After close(): what makes an otherwise finished run fail (rows lost, a truncated source)."""
        if self.csv is not None and self.csv.rows_lost:
            return WriteError(self.csv.loss)
        early = self.source.ended_early if self.source is not None else None
        if early:
            return SourceError(f"source ended early: {early[0]} of {early[1]} frames (a truncated file?)")
        return None

    def reload(self, load_config: Callable[[], Config] | None = None) -> None:
        """SIGHUP: read the config again, load the model again (a new .tflite copied in place) and
        reopen the CSV (logrotate).  A reload that fails keeps the running config and model."""
        self.notifier.reloading()
        try:
            self._reload(load_config() if load_config else self.config)
        except (DeviceError, OSError) as exc:  # OSError: e.g. a model copied in with mode 0600
            log.error("reload failed; still running the previous config and model: %s", exc)
            self.notifier.status(f"reload failed: {exc}")
        else:
            log.info("reloaded: model %s, CSV %s", self.config.classifier.model, self.csv.path if self.csv else "off")
            self.notifier.status(f"reloaded the config and {Path(self.config.classifier.model).name}")
        self.notifier.ready()

    def _reload(self, config: Config) -> None:
        old = self.config
        if (config.source, config.output, config.mqtt, config.web) != (old.source, old.output, old.mqtt, old.web):
            log.warning("source, output, mqtt and web changes take effect at the next restart (systemctl restart)")
            config = dataclasses.replace(config, source=old.source, output=old.output, mqtt=old.mqtt, web=old.web)
        classifier = EmotionClassifier(config.classifier)  # everything that can fail comes first
        detector = _open_detector(config) if config.detector != old.detector else self.detector
        try:
            csv = self._reopen_csv(config, classifier.labels)
        except (DeviceError, OSError):
            if detector is not self.detector:
                detector.close()
            raise
        if detector is not self.detector:
            self.detector.close()
        if classifier.labels != self.classifier.labels or config.tracker != old.tracker:
            self.tracker = Tracker(config.tracker, classifier.labels)
        self.classifier, self.detector, self.csv, self.config = classifier, detector, csv, config

    def _reopen_csv(self, config: Config, labels: tuple[str, ...]) -> CsvLog | None:
        """The same log reopened (logrotate moved it; rows held on a full disk are kept), or a new one."""
        if self.csv is not None and config.log == self.config.log and labels == self.classifier.labels:
            self.csv.reopen()
            return self.csv
        csv = CsvLog(config.log, labels, self.started_at) if config.log.csv else None  # fails before the old one closes
        if self.csv is not None:
            self.csv.close()
        return csv

    def _csv_counters(self) -> dict[str, float]:
        csv = self.csv
        return {"csv_backlog": csv.backlog, "csv_rows_dropped": csv.rows_dropped} if csv is not None else {}

    def close(self) -> None:
        """Close every part, even when one fails; then raise the first failure."""
        first: BaseException | None = None
        # The runner's threads first: they use the source and the detector.
        for part in (self._runner, self.progress, self.results, self.sink, self.source, self.detector, self.csv):
            if part is None:
                continue
            try:
                part.close()
            except Exception as exc:  # noqa: BLE001 - the other parts (the CSV) must still close
                log.error("closing the %s failed: %s", type(part).__name__, exc)
                first = first or exc
        if isinstance(first, DeviceError):
            raise first
        if first is not None:
            raise WriteError(f"closing the outputs failed: {first}") from None
