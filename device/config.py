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

DEFAULT_MODEL = "models/emotion_fer2013.tflite"


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


@dataclass
class DetectorConfig:
    model: str = opt("auto", "auto: full-range, then short-range when full-range finds nothing", "--detector",
                     choices=("auto", "full", "short"))
    min_confidence: float = opt(0.5, "minimum face detection score", "--min-confidence", low=0.0, high=1.0)
    tiles: int = opt(1, "also detect on NxN overlapping tiles, for crowds in large frames", "--tiles", low=1, high=8)
    models_dir: str = opt("models", "folder of the face-detection models (python -m device models)", "--face-models")
    detect_every: int = opt(3, "full-frame detection every N frames, optical flow follows faces in between "
                            "(and a cut, a lost face or one at the edge detects at once); 1: every frame",
                            "--detect-every", low=1, high=100)


@dataclass
class ClassifierConfig:
    model: str = opt(DEFAULT_MODEL, "emotion model (.tflite with its .json manifest beside it)", "--model")
    threads: int = opt(1, "CPU threads for the classifier", "--threads", low=1, high=64)
    accelerator: str = opt("auto", "auto, cpu, gpu, or PATH.so of an external delegate", "--accelerator")
    crop_margin: float | None = opt(None, "override the manifest's face-crop margin", "--crop-margin",
                                    low=0.0, high=1.0)


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


@dataclass
class RunConfig:
    max_frames: int | None = opt(None, "stop after N frames", "--max-frames", low=1, high=10**12)
    stats_interval: float = opt(60.0, "seconds between health lines in the log", "--stats-interval",
                                low=1.0, high=86400.0)
    no_frame_timeout: float = opt(30.0, "exit non-zero after this long without a frame (systemd restarts)",
                                  "--no-frame-timeout", low=1.0, high=86400.0)
    reconnect_max_delay: float = opt(10.0, "longest wait between camera reconnects", "--reconnect-max-delay",
                                     low=0.1, high=600.0)
    workers: int | None = opt(None, "threads for the stages (read, detect, classify+track+output), up to 3; "
                              "1: all on one thread; default: the CPU count", "--workers", low=1, high=64)


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
