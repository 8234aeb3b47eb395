"""Test helpers for the fleet features: a real Mosquitto on a free loopback port, and a paho subscriber."""

from __future__ import annotations

import getpass
import json
import os
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

    def __init__(self, folder: Path, port: int | None = None, listener: str = "allow_anonymous true\n"):
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
        self.binary, self.folder, self.port = binary, folder, port or free_port()
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # As root, mosquitto would switch to the user "mosquitto", who cannot read pytest's private temp folders.
        user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\n{listener}persistence true\n"
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

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber", persistent: bool = False,
                 ca: Path | None = None, auth: tuple[str, str] | None = None):
        import paho.mqtt.client as paho
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1, 1)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.connected.set())
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        # Not before the broker's SUBACK: a message published earlier would be missed, or come back retained.
        if not (self.connected.wait(10) and self.subscribed.wait(10)):
            raise RuntimeError("the test subscriber could not connect and subscribe")

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


def make_tls(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast), made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "san.cnf")}
    paths["san.cnf"].write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(paths["ca.key"]), "-out", str(paths["ca.pem"]), "-days", "1",
        "-subj", "/CN=fleet-test-ca")
    run("req", *ec, "-keyout", str(paths["server.key"]), "-out", str(paths["server.csr"]), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(paths["server.csr"]), "-CA", str(paths["ca.pem"]), "-CAkey", str(paths["ca.key"]),
        "-CAcreateserial", "-out", str(paths["server.pem"]), "-days", "1", "-extfile", str(paths["san.cnf"]))
    return paths


def make_passwords(folder: Path, users: dict[str, str]) -> Path:
    path = folder / "passwords"
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user, password],
                       check=True, capture_output=True)
    return path
