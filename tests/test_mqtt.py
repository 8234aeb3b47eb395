"""MQTT publishing with a real Mosquitto on loopback and real faces: what arrives matches the CSV of the same
run, and a broker that goes away mid-run never stops the pipeline; the loss is bounded and counted."""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from device import config as cfgmod
from device.errors import ConfigError
from tests.brokers import Mosquitto, Subscriber, make_passwords, make_tls, wait_until
from device import manifest as mf
from tests.conftest import ROOT
from tests.test_device import compose_video, read_rows, run_device

pytest.importorskip("paho.mqtt.client")
MODEL = ROOT / "models" / "emotion_ferplus.tflite"  # the default model: real labels (8) on real faces
LABELS = mf.load(mf.manifest_path_for(MODEL)).labels


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def check_message_matches_rows(message: dict, rows: list[dict]) -> None:
    """One faces message against the CSV rows of its frame: same faces, same fields, same values."""
    assert len(message["faces"]) == len(rows)
    by_track = {int(r["track_id"]): r for r in rows}
    for face in message["faces"]:
        row = by_track[face["track_id"]]
        assert [message[k] for k in ("timestamp", "run", "source")] == [row[k] for k in ("timestamp", "run", "source")]
        assert [face[k] for k in ("x", "y", "w", "h")] == [int(row[k]) for k in ("x", "y", "w", "h")]
        assert face["label"] == row["label"] and f"{face['confidence']:.4f}" == row["confidence"]
        assert {k: f"{v:.4f}" for k, v in face["probs"].items()} == {label: row[f"p_{label}"] for label in LABELS}


def test_messages_match_the_csv_rows(tmp_path, broker):
    if not MODEL.exists():
        pytest.skip("the shipped model is missing")
    frames = 24
    video = compose_video(tmp_path / "faces.avi", 3, frames)
    sub = Subscriber(broker.port, "fleet/#")
    try:
        result = run_device("run", "--source", str(video), "--detector", "short", "--model", str(MODEL),
                            "--csv", str(tmp_path / "log.csv"), "--mqtt", f"mqtt://127.0.0.1:{broker.port}/fleet",
                            "--device-id", "cam1")
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_until(lambda: sub.on("cam1/availability")[-1:] == [(b"offline", False)], 10)
        messages = sub.json_on("cam1/faces")
        statuses = sub.json_on("cam1/status")
    finally:
        sub.close()
    rows = read_rows(tmp_path / "log.csv")
    assert len(rows) == 3 * frames
    by_frame = defaultdict(list)
    for row in rows:
        by_frame[int(row["frame"])].append(row)
    # one message per frame with faces, in order, matching the CSV rows of that frame field by field
    assert [m["frame"] for m in messages] == sorted(by_frame) == list(range(frames))
    for message in messages:
        check_message_matches_rows(message, by_frame[message["frame"]])
    assert sum(len(m["faces"]) for m in messages) == len(rows)
    final = statuses[-1]
    assert final["state"] == "offline" and final["frames"] == frames and final["faces"] == len(rows)
    assert final["mqtt_dropped"] == 0 and final["mqtt_reconnects"] == 0
    # availability: online while running, then offline (retained) at the clean stop
    assert [p for p, _ in sub.on("cam1/availability")] == [b"online", b"offline"]


def test_broker_killed_and_restarted_mid_run(tmp_path, broker):
    """The broker goes away (SIGTERM) while frames flow, and comes back on the same port."""
    if not MODEL.exists():
        pytest.skip("the shipped model is missing")
    from device.pipeline import Pipeline

    video = compose_video(tmp_path / "faces.avi", 1, 24)
    queue = 15
    config = cfgmod.load(None, {
        "source": {"uri": str(video), "loop": True}, "detector": {"model": "short"},
        "classifier": {"model": str(MODEL)}, "log": {"csv": str(tmp_path / "log.csv")},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}/fleet", "device_id": "cam2", "queue": queue,
                 "status_interval": 0.5, "reconnect_max_delay": 1.0}})
    # A persistent session: what the broker holds for the subscriber survives the restart.
    sub = Subscriber(broker.port, "fleet/cam2/#", client_id="fleet-test", persistent=True)
    pipeline = Pipeline(config)
    mqtt = pipeline.results.sinks[0]
    step_s: dict[str, list[float]] = defaultdict(list)

    def step(phase: str) -> None:
        start = time.perf_counter()
        assert pipeline.step() is not None
        step_s[phase].append(time.perf_counter() - start)

    try:
        assert wait_until(lambda: mqtt.counters()["mqtt_connected"], 10)
        for _ in range(20):
            step("up")
        assert wait_until(lambda: len(sub.json_on("cam2/faces")) == 20, 10)
        broker.stop()
        assert wait_until(lambda: not mqtt.counters()["mqtt_connected"], 5)
        outage = 3 * queue
        for _ in range(outage):
            step("down")
        during = mqtt.counters()
        assert during["mqtt_queue"] == queue  # bounded: the newest `queue` messages are held
        assert during["mqtt_dropped"] == outage - queue  # the rest dropped, oldest first, and counted
        assert "mqtt disconnected, queue 15, dropped 30, reconnects 0" in pipeline.health_line()
        broker.start()  # same port, same persistence folder
        deadline = time.monotonic() + 20
        while not mqtt.counters()["mqtt_connected"] and time.monotonic() < deadline:
            step("reconnecting")  # the pipeline keeps going while paho reconnects with backoff
        assert mqtt.counters()["mqtt_reconnects"] == 1
        for _ in range(10):
            step("up")
        frames = pipeline.stats.frames
        assert wait_until(lambda: mqtt.counters()["mqtt_queue"] == 0, 10)
        assert sub.connected.wait(10)
    finally:
        pipeline.close()
    try:
        assert wait_until(lambda: any(s["state"] == "offline" for s in sub.json_on("cam2/status")), 10)
        got = {(m["timestamp"], m["frame"]) for m in sub.json_on("cam2/faces")}  # QoS 1 may repeat one
        final = sub.json_on("cam2/status")[-1]
    finally:
        sub.close()
    rows = read_rows(tmp_path / "log.csv")
    sent_frames = {(r["timestamp"], int(r["frame"])) for r in rows}
    assert len(sent_frames) == frames  # one face in every frame: one message per frame
    dropped = mqtt.counters()["mqtt_dropped"]
    assert got <= sent_frames
    # Every frame arrived except those counted as dropped; the dropped ones are the oldest of the outage.
    assert len(got) + dropped == frames, (len(got), dropped, frames)
    # Bounded: while the broker was away, all but the newest `queue` messages were dropped, no more.
    away = outage + len(step_s["reconnecting"])
    assert during["mqtt_dropped"] <= dropped <= away - queue
    assert final["mqtt_dropped"] == dropped and final["mqtt_reconnects"] == 1 and final["frames"] == frames
    # Never stalled: no step while the broker was away took longer than the slowest with it up, plus slack.
    slowest_up = max(step_s["up"])
    assert max(step_s["down"] + step_s["reconnecting"]) < max(0.5, 3 * slowest_up), step_s


def test_credentials_come_from_the_environment_not_flags(monkeypatch):
    from device.mqtt import credentials

    cfg = cfgmod.MqttConfig(url="mqtt://127.0.0.1/x")
    monkeypatch.setenv("EMOTION_MQTT_USERNAME", "pi")
    monkeypatch.setenv("EMOTION_MQTT_PASSWORD", "secret")
    assert credentials(cfg) == ("pi", "secret")
    assert credentials(cfgmod.MqttConfig(url="mqtt://h/x", username="a", password="b")) == ("a", "b")
    result = run_device("run", "--help")
    assert "--mqtt-password" not in result.stdout and "--password" not in result.stdout


@pytest.mark.parametrize("url,message", [
    ("http://host/x", "is not mqtt://"), ("mqtt://host", "needs a topic prefix"),
    ("mqtt://user:pw@host/x", "no credentials in the URL"), ("mqtt://host:99999/x", "mqtt.url"),
    ("mqtt://host/a/#", "without wildcards")])
def test_bad_urls_are_one_line(url, message):
    with pytest.raises(ConfigError, match=message):
        cfgmod.load(None, {"mqtt": {"url": url}})


def test_bad_url_on_the_command_line_is_one_line():
    url = "mqtt://user:pw@host/x"
    result = run_device("run", "--mqtt", url, "--source", "demo", "--max-frames", "1")
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: mqtt.url")


def test_url_defaults():
    assert cfgmod.parse_mqtt_url("mqtt://broker.lan/emotion") == cfgmod.MqttUrl("broker.lan", 1883, "emotion", False)
    assert cfgmod.parse_mqtt_url("mqtts://b:1/lab/a") == cfgmod.MqttUrl("b", 1, "lab/a", True)


def test_tls_and_password_from_the_environment(tmp_path):
    """mqtts:// to a broker that wants a password: the credentials come from the environment, the CA from
    --mqtt-ca; a wrong password is refused by the broker, logged, and the pipeline runs on."""
    folder = tmp_path / "broker"
    tls = make_tls(folder / "tls")
    passwords = make_passwords(folder, {"cam3": "right horse battery", "reader": "reader-pw"})
    broker = Mosquitto(folder, listener=f"allow_anonymous false\npassword_file {passwords}\ncafile {tls['ca.pem']}\n"
                                        f"certfile {tls['server.pem']}\nkeyfile {tls['server.key']}\n").start()
    try:
        sub = Subscriber(broker.port, "tls/#", ca=tls["ca.pem"], auth=("reader", "reader-pw"))
        url = f"mqtts://127.0.0.1:{broker.port}/tls"
        args = ["run", "--source", "demo", "--max-frames", "5", "--mqtt", url, "--mqtt-ca", str(tls["ca.pem"]),
                "--device-id", "cam3"]
        env = {"EMOTION_MQTT_USERNAME": "cam3", "EMOTION_MQTT_PASSWORD": "right horse battery"}
        result = run_device_env(args, env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_until(lambda: sub.on("cam3/availability")[-1:] == [(b"offline", False)], 10)
        assert [m["frame"] for m in sub.json_on("cam3/faces")] == [0, 1, 2, 3, 4]
        assert "MQTT: connected to 127.0.0.1" in result.stderr
        sub.close()
        wrong = run_device_env(args, {**env, "EMOTION_MQTT_PASSWORD": "wrong"})
        assert wrong.returncode == 0 and "done: 5 frames" in wrong.stdout
        assert "refused the connection" in wrong.stderr and "5 messages not delivered at exit" in wrong.stderr
    finally:
        broker.stop()


def run_device_env(args: list[str], env: dict[str, str]):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **env})
