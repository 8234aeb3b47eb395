"""Test helpers for the fleet features: a real Mosquitto on a free loopback port, and a paho subscriber."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


class Mosquitto:
    """Debian's mosquitto on 127.0.0.1 with a temp config; persistence on, so a SIGTERM keeps queued messages."""

    def __init__(self, folder: Path, port: int | None = None):
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
        self.binary, self.folder, self.port = binary, folder, port or free_port()
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder / 'data'}/\nlog_dest stderr\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "broker.log", "ab"))

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        if not wait_until(listening, 10):
            raise RuntimeError(f"mosquitto did not start: {(self.folder / 'broker.log').read_text()[-2000:]}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """A paho 2.x client that records every message on ``topic`` (QoS 1)."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber", persistent: bool = False):
        import paho.mqtt.client as paho
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.connected.set())
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("the test subscriber could not connect")
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, suffix: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(payload, retain) for topic, payload, retain in self.messages if topic.endswith(suffix)]

    def json_on(self, suffix: str) -> list[dict]:
        return [json.loads(payload) for payload, _ in self.on(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
