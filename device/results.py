"""Consumers of per-frame results beside the CSV log: what MQTT (device.mqtt) and the web view (device.web) share.

Every consumer is a :class:`ResultSink`: the pipeline hands it each frame's
:class:`FrameResult` and its live :class:`Stats` in one call, and closes it at
the end.  ``publish`` must return at once: a consumer that does real work (a
network, an encoder) keeps a bounded queue or only the latest result, does the
work in its own thread, and counts what it drops.  Both are off by default;
the pipeline builds the ones the config turns on.
"""

from __future__ import annotations

import logging
from typing import Protocol

from device.csvlog import utc_stamp
from device.frames import Face, FrameResult
from device.stages import Stats

log = logging.getLogger(__name__)


class ResultSink(Protocol):
    def publish(self, result: FrameResult, stats: Stats) -> None:
        """Take one frame's result without blocking (called from the pipeline loop)."""

    def counters(self) -> dict[str, float]:
        """Named counters for /api/status and /metrics (e.g. ``mqtt_dropped``)."""

    def health(self) -> str:
        """A short part of the pipeline's health line ("mqtt connected, queue 0, dropped 0, ...")."""

    def close(self) -> None: ...


class ResultSinks:
    """All consumers behind one call; an empty one costs a loop over nothing."""

    def __init__(self, sinks: list[ResultSink] | None = None):
        self.sinks = list(sinks or [])

    def add(self, sink: ResultSink) -> None:
        self.sinks.append(sink)

    def publish(self, result: FrameResult, stats: Stats) -> None:
        for sink in self.sinks:
            sink.publish(result, stats)

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for sink in self.sinks:
            out.update(sink.counters())
        return out

    def health(self) -> str:
        return "".join(f", {part}" for part in (sink.health() for sink in self.sinks) if part)

    def close(self) -> None:
        for sink in reversed(self.sinks):
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one consumer failing to close must not lose the others
                log.warning("closing %s failed: %s", type(sink).__name__, exc)


def timestamp(result: FrameResult) -> str:
    """The frame's UTC time as the CSV writes it (milliseconds, ``Z``)."""
    return utc_stamp(result.frame.timestamp)


def face_dict(face: Face, labels: tuple[str, ...]) -> dict:
    """One face with the CSV's columns (rounded as the CSV rounds them) and the per-class probabilities."""
    b = face.box
    return {"track_id": face.track_id, "x": b.x, "y": b.y, "w": b.w, "h": b.h, "label": face.label,
            "confidence": round(float(face.confidence), 4),
            "probs": {label: round(p, 4) for label, p in zip(labels, face.probs.tolist())}}  # tolist: fast floats
