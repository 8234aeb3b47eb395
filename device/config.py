"""The device's configuration: one typed place, read from TOML, overridden by CLI flags.

Every field has a default, a help text, and bounds or choices.  Unknown keys
and bad values raise :class:`ConfigError` naming the key path (``detector.tiles``).
Each pipeline stage receives only its own section.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Jetson)
    import tomli as tomllib

from device.errors import ConfigError
from device.locations import FACE_MODELS_ENV, default_model

DEFAULT_MODEL = str(default_model())  # package data in a wheel, models/ in a checkout


def opt(default: Any, help: str, flag: str | None = None, choices: tuple | None = None,
        low: float | None = None, high: float | None = None) -> Any:
    meta = {"help": help, "flag": flag, "choices": choices, "low": low, "high": high}
    return field(default=default, metadata=meta)


@dataclass
class SourceConfig:
    uri: str = opt("auto", "auto (first camera), demo or demo:1 (built in), picamera2:N, /dev/videoN or N, rtsp://..., a GStreamer "
                   "pipeline (with '!'), a video file, an image file, or a directory or glob of images", "--source")
    width: int = opt(640, "requested camera width", "--width", low=16, high=8192)
    height: int = opt(480, "requested camera height", "--height", low=16, high=8192)
    fps: int = opt(30, "requested camera frame rate", "--fps", low=1, high=240)
    loop: bool = opt(False, "restart file sources at their end (soak tests, exhibits)", "--loop")
    realtime: bool = opt(False, "play files, photo folders and the demo at their own frame rate (always when a "
                         "person watches: display, drm or --serve); else they go as fast as possible", "--realtime")


@dataclass
class DetectorConfig:
    model: str = opt("auto", "auto: full-range, then short-range when full-range finds nothing", "--detector",
                     choices=("auto", "full", "short"))
    min_confidence: float = opt(0.5, "minimum face detection score", "--min-confidence", low=0.0, high=1.0)
    tiles: int = opt(1, "also detect on NxN overlapping tiles, for crowds in large frames", "--tiles", low=1, high=8)
    models_dir: str = opt("auto", "folder of the face-detection models (python -m device models); auto: "
                          f"${FACE_MODELS_ENV}, a checkout's models/, else this installation's data folder",
                          "--face-models")
    detect_every: int = opt(3, "full-frame detection every N frames, optical flow follows faces in between "
                            "(and a cut, a lost face or one at the edge detects at once); 1: every frame",
                            "--detect-every", low=1, high=100)


@dataclass
class ClassifierConfig:
    model: str = opt(DEFAULT_MODEL, "emotion model: ferplus (shipped, the default: 8 expressions as ten annotators "
                     "see them), fer2013 (shipped: FER2013's 7 single-annotator labels), or a .tflite with its .json "
                     "manifest beside it", "--model")
    threads: int = opt(1, "CPU threads for the classifier", "--threads", low=1, high=64)
    accelerator: str = opt("auto", "auto, cpu, gpu, or PATH.so of an external delegate", "--accelerator")
    crop_margin: float | None = opt(None, "override the manifest's face-crop margin", "--crop-margin",
                                    low=0.0, high=1.0)
    classify_every: int = opt(1, "classify a face that has not moved every N frames, keeping its probabilities "
                              "in between (a new or moved face is classified at once); 1: every frame",
                              "--classify-every", low=1, high=100)


@dataclass
class TrackerConfig:
    iou_threshold: float = opt(0.3, "minimum IoU to continue a track", "--iou-threshold", low=0.0, high=1.0)
    max_missed: int = opt(15, "frames a track survives without a detection", "--max-missed", low=0, high=10000)
    smoothing: float = opt(0.6, "weight of the past in the probability average (0: none)", "--smoothing",
                           low=0.0, high=0.99)
    hysteresis: float = opt(0.1, "probability margin a new label needs to replace the shown one", "--hysteresis",
                            low=0.0, high=1.0)


@dataclass
class OverlayConfig:
    bars: bool = opt(False, "draw per-class probability bars beside each face", "--bars")
    stats: bool = opt(True, "draw FPS and per-stage latency in a corner", "--stats")


@dataclass
class OutputConfig:
    target: str = opt("none", "none, display, drm, FILE.mp4, or DIR/ for annotated images", "--output")
    fullscreen: bool = opt(False, "fullscreen display window (HDMI screens)", "--fullscreen")
    faces_dir: str | None = opt(None, "store face crops here (off by default: no face image is kept)",
                                "--save-faces")


@dataclass
class LogConfig:
    csv: str | None = opt(None, "CSV log: one row per face per frame; a folder when rotating", "--csv")
    fsync_interval: float = opt(1.0, "seconds between fsyncs of the CSV (0: every frame)", "--fsync-interval",
                                low=0.0, high=3600.0)
    rotate: str = opt("none", "start a new CSV file daily or by size", "--rotate", choices=("none", "daily", "size"))
    max_bytes: int = opt(50_000_000, "file size for --rotate size", "--max-bytes", low=1024, high=10**12)
    retention_days: int = opt(0, "delete rotated CSV files older than this (0: keep all)", "--retention-days",
                              low=0, high=36500)
    flush_timeout: float = opt(5.0, "at stop, seconds to retry writing rows held on a full disk (keep it under "
                               "the unit's TimeoutStopSec)", "--flush-timeout", low=0.0, high=600.0)


@dataclass
class RunConfig:
    max_frames: int | None = opt(None, "stop after N frames", "--max-frames", low=1, high=10**12)
    stats_interval: float = opt(60.0, "seconds between health lines in the log", "--stats-interval",
                                low=1.0, high=86400.0)
    no_frame_timeout: float = opt(30.0, "exit non-zero after this long without a frame (systemd restarts)",
                                  "--no-frame-timeout", low=1.0, high=86400.0)
    reconnect_max_delay: float = opt(10.0, "longest wait between camera reconnects", "--reconnect-max-delay",
                                     low=0.1, high=600.0)
    workers: int | None = opt(None, "threads for the stages (read, detect, classify+track+output), up to 3, "
                              "plus one that runs full detections ahead; 1: all on one thread; default: the "
                              "CPU count", "--workers", low=1, high=64)


@dataclass
class MqttConfig:
    # The username and password come from this file or EMOTION_MQTT_USERNAME / EMOTION_MQTT_PASSWORD,
    # never from flags (a command line is visible to every user of the machine).
    url: str | None = opt(None, "publish results to an MQTT broker: mqtt://HOST[:PORT]/PREFIX, or mqtts:// for TLS "
                          "(off by default)", "--mqtt")
    device_id: str | None = opt(None, "this device's name in the topics (default: the hostname)", "--device-id")
    username: str | None = opt(None, "broker username (config file or EMOTION_MQTT_USERNAME only)")
    password: str | None = opt(None, "broker password (config file or EMOTION_MQTT_PASSWORD only)")
    ca_file: str | None = opt(None, "CA certificate for mqtts:// (default: the system's)", "--mqtt-ca")
    queue: int = opt(1000, "messages held while the broker is away; the oldest are dropped and counted",
                     "--mqtt-queue", low=1, high=1_000_000)
    status_interval: float = opt(5.0, "seconds between retained status messages", "--mqtt-status-interval",
                                 low=0.5, high=3600.0)
    keepalive: int = opt(30, "seconds between MQTT keep-alive pings", "--mqtt-keepalive", low=5, high=3600)
    reconnect_max_delay: float = opt(30.0, "longest wait between broker reconnects", "--mqtt-reconnect-max-delay",
                                     low=1.0, high=3600.0)


@dataclass
class WebConfig:
    serve: str | None = opt(None, "serve the live view, /api/status and /metrics on HOST:PORT (off by default; "
                            "HOST defaults to 127.0.0.1)", "--serve")
    token: str | None = opt(None, "require ?token= or 'Authorization: Bearer' (config file or EMOTION_WEB_TOKEN)")
    max_fps: float = opt(10.0, "cap on the MJPEG frame rate (frames are encoded only while someone watches)",
                         "--serve-fps", low=0.2, high=60.0)
    timeline_minutes: float = opt(5.0, "minutes of emotion timeline kept for the page", "--timeline-minutes",
                                  low=0.5, high=1440.0)


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    web: WebConfig = field(default_factory=WebConfig)


def sections() -> list[tuple[str, type]]:
    return [(f.name, f.type if isinstance(f.type, type) else globals()[f.type]) for f in dataclasses.fields(Config)]


def _field_types(section: type) -> dict[str, Any]:
    return typing.get_type_hints(section)


def _check(path: str, value: Any, kind: Any, meta: dict) -> Any:
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{path}: a value is required")
    base = next(t for t in allowed if t is not type(None))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {base.__name__}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta.get("low") is not None and value < meta["low"]:
        raise ConfigError(f"{path}: {value!r} is below the minimum {meta['low']}")
    if meta.get("high") is not None and value > meta["high"]:
        raise ConfigError(f"{path}: {value!r} is above the maximum {meta['high']}")
    return value


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Merge ``{section: {key: value}}`` into ``base`` (defaults), validating every key."""
    config = dataclasses.replace(base) if base else Config()
    known = dict(sections())
    for name, values in data.items():
        if name not in known:
            raise ConfigError(f"unknown config section {name!r} (known: {', '.join(known)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a table of keys")
        section_cls = known[name]
        fields = {f.name: f for f in dataclasses.fields(section_cls)}
        hints = _field_types(section_cls)
        current = dataclasses.asdict(getattr(config, name))
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {name}.{key} (known: {', '.join(fields)})")
            current[key] = _check(f"{name}.{key}", value, hints[key], fields[key].metadata)
        setattr(config, name, section_cls(**current))
    validate(config)
    return config


def validate(config: Config) -> None:
    accel = config.classifier.accelerator
    if accel not in ("auto", "cpu", "gpu") and not accel.endswith((".so", ".so.1", ".so.2")) and "/" not in accel:
        raise ConfigError(f"classifier.accelerator: {accel!r} is not auto, cpu, gpu or a delegate .so path")
    if config.log.rotate != "none" and not config.log.csv:
        raise ConfigError("log.rotate needs log.csv (a folder for the rotated files)")
    if config.mqtt.url:
        parse_mqtt_url(config.mqtt.url)
    if config.web.serve:
        parse_serve(config.web.serve)


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    prefix: str
    tls: bool


def parse_mqtt_url(url: str) -> MqttUrl:
    """``mqtt://HOST[:PORT]/PREFIX`` (port 1883) or ``mqtts://...`` (port 8883); no credentials in it."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"mqtt.url: {url!r}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"mqtt.url: {url!r} is not mqtt://HOST[:PORT]/PREFIX or mqtts://HOST[:PORT]/PREFIX")
    if parts.username or parts.password:
        raise ConfigError("mqtt.url: no credentials in the URL; set mqtt.username and mqtt.password in the config "
                          "file or EMOTION_MQTT_USERNAME / EMOTION_MQTT_PASSWORD")
    prefix = parts.path.strip("/")
    if not prefix or any(ch in url for ch in "+#?"):
        raise ConfigError(f"mqtt.url: {url!r} needs a topic prefix without wildcards (mqtt://HOST/emotion)")
    tls = parts.scheme == "mqtts"
    return MqttUrl(parts.hostname, port or (8883 if tls else 1883), prefix, tls)


def parse_serve(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); ``[::1]:PORT`` for IPv6."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"web.serve: {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- TOML file <- CLI overrides (``{"detector": {"tiles": 2}}``)."""
    config = Config()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        config = from_dict(data, config)
    if overrides:
        config = from_dict(overrides, config)
    return config


def to_toml(config: Config) -> str:
    """The config as TOML (None values are left out: they mean 'not set')."""
    lines = []
    for name, _ in sections():
        lines.append(f"[{name}]")
        for key, value in dataclasses.asdict(getattr(config, name)).items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
