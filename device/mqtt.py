"""Publish results to an MQTT broker (paho-mqtt 2.x), off by default: ``--mqtt mqtt://HOST:PORT/PREFIX``.

Topics (QoS 1), with ``ID`` the device id (the hostname unless set):

- ``PREFIX/ID/faces``: one JSON message per frame with faces (the CSV's fields per face, a label per
  track), and one with ``"faces": []`` when the last face leaves;
- ``PREFIX/ID/status`` (retained): fps, frames, faces, dropped frames, camera reconnects and this
  publisher's queue, drops and broker reconnects, every ``status_interval`` seconds;
- ``PREFIX/ID/availability`` (retained): ``online``, or ``offline`` (the broker's last will, or a
  clean stop).

The pipeline only appends to a bounded queue (the oldest message is dropped and counted when it is
full).  One thread hands messages to paho only while the broker is connected and at most ``WINDOW``
are unacknowledged, so paho's own buffer stays small too; paho's network thread reconnects with
exponential backoff and resends what was in flight.  A broker that is down or slow never stalls the loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque

from device.config import MqttConfig, parse_mqtt_url
from device.errors import ConfigError
from device.frames import FrameResult
from device.results import face_dict, timestamp
from device.stages import Stats

log = logging.getLogger(__name__)

WINDOW = 50  # messages handed to paho and not yet acknowledged (bounds paho's own queue)


def credentials(cfg: MqttConfig) -> tuple[str | None, str | None]:
    """The config file's username and password, or the environment's (never flags)."""
    return (cfg.username or os.environ.get("EMOTION_MQTT_USERNAME") or None,
            cfg.password or os.environ.get("EMOTION_MQTT_PASSWORD") or None)


class MqttSink:
    def __init__(self, cfg: MqttConfig, labels: tuple[str, ...], run: str = ""):
        try:
            import paho.mqtt.client as paho
        except ModuleNotFoundError:
            raise ConfigError("mqtt.url: paho-mqtt is not installed (pip install 'edge-emotion[device]')") from None
        url = parse_mqtt_url(cfg.url or "")
        self.cfg, self.labels, self.run = cfg, labels, run
        self.device_id = cfg.device_id or socket.gethostname()
        if any(ch in self.device_id for ch in "/+#"):
            raise ConfigError(f"mqtt.device_id: {self.device_id!r} may not contain / + or #")
        base = f"{url.prefix}/{self.device_id}"
        self.topics = {"faces": f"{base}/faces", "status": f"{base}/status", "availability": f"{base}/availability"}
        self.dropped = 0  # messages evicted from the full queue
        self.sent = 0  # messages acknowledged by the broker (faces, status, availability)
        self.connects = 0
        self._queue: deque[tuple[str, bytes, bool]] = deque()
        self._cond = threading.Condition()
        self._connected = False
        self._unacked = 0
        self._closing = False
        self._had_faces = False
        self._stats: Stats | None = None

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"emotion-{self.device_id}",
                             protocol=paho.MQTTv311)
        user, password = credentials(cfg)
        if user:
            client.username_pw_set(user, password)
        if url.tls:
            try:
                client.tls_set(ca_certs=cfg.ca_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.ca_file: {exc}") from None
        client.will_set(self.topics["availability"], "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_delay)))
        client.max_inflight_messages_set(WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self._failures = 0
        self.client = client
        self.url = url
        # connect_async + loop_start: paho's thread connects, and reconnects with backoff, also when the
        # broker is down at start; nothing here waits for the network.
        client.connect_async(url.host, url.port, keepalive=cfg.keepalive)
        client.loop_start()
        self._worker = threading.Thread(target=self._send_loop, name="mqtt-send", daemon=True)
        self._worker.start()
        log.info("MQTT: publishing to %s://%s:%d/%s/%s (QoS 1)", "mqtts" if url.tls else "mqtt", url.host,
                 url.port, url.prefix, self.device_id)

    # -- the pipeline's side: never blocks on the network ---------------------------------------------
    def publish(self, result: FrameResult, stats: Stats) -> None:
        self._stats = stats
        if result.faces or self._had_faces:
            message = {"timestamp": timestamp(result), "run": self.run, "frame": result.frame.index,
                       "source": result.frame.source,
                       "faces": [face_dict(f, self.labels) for f in result.faces]}
            self._put(self.topics["faces"], json.dumps(message).encode(), False)
            self._had_faces = bool(result.faces)

    def _put(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._cond:
            if len(self._queue) >= self.cfg.queue:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("MQTT: broker unreachable or slow; %d messages dropped so far", self.dropped)
            self._queue.append((topic, payload, retain))
            self._cond.notify()

    def counters(self) -> dict[str, float]:
        return {"mqtt_queue": len(self._queue), "mqtt_dropped": self.dropped, "mqtt_sent": self.sent,
                "mqtt_reconnects": max(0, self.connects - 1), "mqtt_connected": int(self._connected)}

    def health(self) -> str:
        c = self.counters()
        state = "connected" if c["mqtt_connected"] else "disconnected"
        return (f"mqtt {state}, queue {c['mqtt_queue']}, dropped {c['mqtt_dropped']}, "
                f"reconnects {c['mqtt_reconnects']}")

    # -- the sender thread -------------------------------------------------------------------------
    def _send_loop(self) -> None:
        status_due = 0.0
        while True:
            with self._cond:
                while not self._closing and not (self._connected and self._unacked < WINDOW and (
                        self._queue or (self._stats is not None and time.monotonic() >= status_due))):
                    self._cond.wait(timeout=max(0.05, min(1.0, status_due - time.monotonic())))
                if self._closing:
                    return
                item = self._queue.popleft() if self._queue else None
            if item is not None:
                self._send(*item)
            if time.monotonic() >= status_due and self._stats is not None:
                status_due = time.monotonic() + self.cfg.status_interval
                self._send(self.topics["status"], self._status_payload(), True)

    def _send(self, topic: str, payload: bytes | str, retain: bool):
        """Every publish is QoS 1 and counted before paho sees it, so its acknowledgement can never come first."""
        with self._cond:
            self._unacked += 1
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def _status_payload(self, state: str = "online") -> bytes:
        s = self._stats.snapshot()
        c = self.counters()
        return json.dumps({"state": state, "fps": round(s.fps(), 2), "frames": s.frames, "faces": s.faces,
                           "frames_without_faces": s.frames_without_faces, "dropped_frames": s.skipped_frames,
                           "reconnects": s.reconnects, "mqtt_queue": c["mqtt_queue"],
                           "mqtt_dropped": c["mqtt_dropped"], "mqtt_reconnects": c["mqtt_reconnects"],
                           "time": time.time()}).encode()

    # -- paho's network thread ---------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:  # e.g. a wrong password: paho tries again with backoff
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.warning("MQTT: broker %s:%d refused the connection: %s", self.url.host, self.url.port,
                            reason_code)
            return
        self._send(self.topics["availability"], "online", True)
        with self._cond:
            self.connects += 1
            self._connected = True
            self._cond.notify()
        if self.connects > 1:
            log.info("MQTT: reconnected to %s:%d", self.url.host, self.url.port)
        else:
            log.info("MQTT: connected to %s:%d", self.url.host, self.url.port)
        self._failures = 0

    def _on_connect_fail(self, client, userdata) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 100 == 0:
            log.warning("MQTT: cannot reach the broker %s:%d (%d attempts); retrying with backoff",
                        self.url.host, self.url.port, self._failures)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
        if was and not self._closing:
            log.warning("MQTT: lost the broker (%s); reconnecting with backoff", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._unacked -= 1
            self.sent += 1
            self._cond.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` s, say ``offline``, disconnect.  The wait does not need a
        connection: a short run can end while paho is still connecting (a TLS handshake)."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._unacked) and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout=1.0)
        if self._connected:
            if self._stats is not None:  # the final figures, retained
                self._send(self.topics["status"], self._status_payload("offline"), True)
            info = self._send(self.topics["availability"], "offline", True)
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        if self._queue or self._unacked:
            log.warning("MQTT: %d messages not delivered at exit", len(self._queue) + self._unacked)
