"""The multi-core runner: a run's stages on their own threads, joined by bounded queues.

read (capture and decode) -> detect -> finish (classify, track, overlay, outputs, CSV)

Each stage runs on one thread, so frames stay in order and the stages need no
locks.  Threads can use the cores because the heavy parts run without the GIL:
MediaPipe's detect() waits on a lock while its graph runs on native threads,
and LiteRT's invoke and OpenCV's calls release the GIL.  ``finish`` runs on the caller's thread (the main one),
where signals, SIGHUP reloads, the watchdog and the CSV live as before.  With
two workers the caller's thread detects too: the reading thread runs ahead of
it, so that the scheduler's lookahead (device.scheduler) can run the full
detections on a thread of its own meanwhile.  With one worker there is no
runner at all (``Pipeline.step`` does everything).

The runner drives whatever it is handed that has the three stages (device.stages.Stages); the
pipeline opens it (``Pipeline.open_runner``), and it knows nothing more of the pipeline.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable

from device.frames import FrameResult
from device.stages import Stages, Work

log = logging.getLogger(__name__)

DEPTH = 4  # frames waiting between two stages: enough to smooth jitter, little latency
POLL = 0.1  # s: how often a blocked stage looks at the halt and stop events
END = object()  # the source ended (or the frame limit was reached)
PAUSED = object()  # the reading stage stopped for a drain()
JOIN_TIMEOUT = 5.0


def workers_for(configured: int | None) -> int:
    """Stage threads: the configured count, else the cores this process may use (taskset, cgroups' cpusets);
    at most one per stage."""
    if configured is None:
        configured = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(3, configured))


class Runner:
    """The read and detect stages on threads; ``step()`` finishes the next frame on the caller's thread.

    ``stop``: the run's stop event; ``budget()``: how many more frames to read at most (None: no limit),
    asked each time the threads start.
    """

    def __init__(self, stages: Stages, workers: int, stop: threading.Event,
                 budget: Callable[[], int | None] = lambda: None):
        self.stages, self.workers, self._stop, self._budget = stages, workers, stop, budget
        self._threads: list[threading.Thread] = []
        self._out: queue.Queue = queue.Queue(DEPTH)
        self._halt = threading.Event()  # close(): leave now
        self._pause = threading.Event()  # drain(): stop reading, pass PAUSED down the line
        self._ended = False
        self._read = 0  # frames handed on by the reading stage
        self._finished = 0  # frames finished on the caller's thread

    def wait_for_frames_in_flight(self) -> None:
        """A camera failed: let the frames read before it be finished first, so that the watchdog pings
        stop, and the reconnect messages come, after the last of them (as on one thread).  Returns at
        once after close()."""
        while self._finished < self._read and not self._halt.is_set() and not self._stop.is_set():
            time.sleep(0.005)

    # -- the stage threads -----------------------------------------------------------------------
    def _start(self) -> None:
        budget = self._budget()  # read no more than will be finished
        self._halt.clear()
        self._pause.clear()
        self._out = queue.Queue(DEPTH)
        if self.workers >= 3:
            decoded: queue.Queue = queue.Queue(DEPTH)
            stages = [(self._produce, (budget, self.stages.read_stage, decoded)),
                      (self._transform, (self.stages.detect_stage, decoded, self._out))]
        else:
            stages = [(self._produce, (budget, self.stages.read_stage, self._out))]
        self._threads = [threading.Thread(target=fn, args=args, name=f"device-stage-{i}", daemon=True)
                         for i, (fn, args) in enumerate(stages)]
        for thread in self._threads:
            thread.start()

    def _produce(self, budget: int | None, read: Callable[[], Work | None], out: queue.Queue) -> None:
        count = 0
        try:
            while budget is None or count < budget:
                if self._pause.is_set():
                    self._put(out, PAUSED)
                    return
                work = read()
                if work is None:
                    break
                count += 1
                self._read += 1
                if not self._put(out, work):
                    return
        except Exception as exc:  # handed to the main thread, which raises it as before
            self._put(out, exc)
            return
        self._put(out, END)

    def _transform(self, fn: Callable[[Work], Work], inp: queue.Queue, out: queue.Queue) -> None:
        while not self._halt.is_set():
            item = self._get(inp)
            if item is None:
                continue
            last = item is END or item is PAUSED or isinstance(item, BaseException)
            if not last:
                try:
                    item = fn(item)
                except Exception as exc:
                    item, last = exc, True
            if not self._put(out, item) or last:
                return

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._halt.is_set():
            try:
                q.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    @staticmethod
    def _get(q: queue.Queue):
        try:
            return q.get(timeout=POLL)
        except queue.Empty:
            return None

    # -- the caller's thread -----------------------------------------------------------------------
    def step(self) -> FrameResult | None:
        """The next frame, finished on this thread; None at the end, or once the stop event is set."""
        if self._ended or self._stop.is_set():
            return None
        if not self._threads:
            self._start()
        while True:
            item = self._get(self._out)
            if item is None:
                if self._stop.is_set():
                    return None
                continue
            if item is PAUSED:  # only after drain(); never seen here
                continue
            if item is END:
                self._ended = True
                self._join()
                return None
            if isinstance(item, BaseException):
                self._ended = True
                self._join()
                raise item
            result = self.stages.finish_stage(self._detected(item))
            self._finished += 1
            return result

    def _detected(self, work: Work) -> Work:
        """With two workers the detect stage runs here, on the caller's thread; with three it has run."""
        return work if self.workers >= 3 else self.stages.detect_stage(work)

    def drain(self) -> None:
        """Stop reading and finish every frame already read, in order (before a reload swaps the models);
        the threads start again at the next step()."""
        if not self._threads:
            return
        self._pause.set()
        while not self._stop.is_set():
            item = self._get(self._out)
            if item is None:
                continue
            if item is PAUSED:
                self._join()
                return
            if item is END or isinstance(item, BaseException):
                self._ended = True
                self._join()
                if item is not END:
                    raise item
                return
            self.stages.finish_stage(self._detected(item))
            self._finished += 1
        self.close()

    def close(self) -> None:
        self._halt.set()
        self._join()

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=JOIN_TIMEOUT)
            if thread.is_alive():  # blocked inside a camera read: it is a daemon and ends with the process
                log.warning("%s still busy after %.0f s; leaving it", thread.name, JOIN_TIMEOUT)
        self._threads = []

