"""``python -m device install-service``: the systemd service, its user, venv, config and models.

Run it as root, from a checkout or from an installed wheel.  Every step can run again (a re-install
updates the code, the unit and the models, and keeps an edited config):

1. the groups ``video`` and ``render``, and the system user ``emotion-device`` in them;
2. a venv in /opt/emotion-device/venv holding this project with its ``[device]`` extra (from a checkout:
   the checkout; from a wheel: the wheel it was installed from, else ``edge-emotion==VERSION``; ``--package``).  On a
   Raspberry Pi and a Jetson the venv sees the system's packages (``--system-site-packages``):
   apt's picamera2 and libcamera on a Pi, JetPack's GStreamer-enabled OpenCV on a Jetson;
3. the face models and the emotion model (with its manifest) in /var/lib/emotion-device/models;
4. /etc/emotion-device/device.toml from systemd/device.toml, validated;
5. /etc/systemd/system/emotion-device.service (and a drop-in on a Jetson), then
   ``systemctl daemon-reload`` and ``systemctl enable`` (and a restart unless ``--no-start``).

``--root DIR`` writes the files under DIR and skips the user, venv and systemctl steps (packaging,
tests, a look before installing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

from device import config as cfgmod
from device.errors import DeviceError
from device import locations
from device.facemodels import FACE_MODELS, provision_command
from device.manifest import manifest_path_for, write_atomic

log = logging.getLogger(__name__)

NAME = "emotion-device"
DISTRIBUTION = "edge-emotion"
DEFAULT_VENV = f"/opt/{NAME}/venv"
STATE = Path(f"/var/lib/{NAME}")
GROUPS = ("video", "render")
PLATFORMS = ("auto", "pi", "jetson", "generic")


def add_install_parser(sub) -> None:
    p = sub.add_parser("install-service", help="install the systemd service (user, venv, config, models, unit)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--platform", choices=PLATFORMS, default="auto", help="auto: read /proc/device-tree/model")
    p.add_argument("--venv", default=DEFAULT_VENV, help=f"the service's virtual environment (default: {DEFAULT_VENV})")
    p.add_argument("--python", help="interpreter for a new venv (default: /usr/bin/python3 when it exists)")
    p.add_argument("--models", help="folder holding the face models and the emotion model to install "
                   "(default: the bundled emotion model and this installation's face models)")
    p.add_argument("--package", help="what pip installs into the venv, with [device] (default: the checkout, or the "
                   "wheel this copy was installed from, or edge-emotion==VERSION from the package index)")
    p.add_argument("--source", help="set source.uri in a new config (default: auto)")
    p.add_argument("--force-config", action="store_true", help="replace an existing /etc config")
    p.add_argument("--no-start", action="store_true", help="enable the service but do not (re)start it now")
    p.add_argument("--root", help="write the files under this folder; skip the user, venv and systemctl steps")


def detect_platform(root: Path = Path("/")) -> str:
    try:
        model = (root / "proc/device-tree/model").read_bytes().decode(errors="replace")
    except OSError:
        model = ""
    if "Raspberry Pi" in model:
        return "pi"
    if "Jetson" in model or (root / "etc/nv_tegra_release").exists():
        return "jetson"
    return "generic"


def venv_command(python: str, venv: str, platform: str) -> list[str]:
    command = [python, "-m", "venv"]
    if platform in ("pi", "jetson"):
        command.append("--system-site-packages")  # apt's picamera2 (Pi), JetPack's OpenCV (Jetson)
    return command + [venv]


def package_spec() -> str:
    """What pip installs into the service's venv: the checkout, the local wheel this copy came from
    (pip records it in direct_url.json, PEP 610), or this version from the package index."""
    if locations.is_checkout():
        return f"{locations.CHECKOUT}[device]"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DeviceError(f"{DISTRIBUTION} is not installed here; give --package WHEEL") from None
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if url.startswith("file://") and Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).is_file():
        return f"{DISTRIBUTION}[device] @ {url}"
    return f"{DISTRIBUTION}[device]=={dist.version}"


def render_unit(venv: str) -> str:
    return (locations.templates() / f"{NAME}.service").read_text().replace(DEFAULT_VENV, venv.rstrip("/"))


def render_config(source: str | None) -> str:
    text = (locations.templates() / "device.toml").read_text()
    if source:
        escaped = source.replace("\\", "\\\\").replace('"', '\\"')
        text = text.replace('uri = "auto"', f'uri = "{escaped}"', 1)
    cfgmod.from_dict(cfgmod.tomllib.loads(text))  # a bad --source fails here, not in the service
    return text


def _run(command: list[str], hint: str = "") -> None:
    log.info("$ %s", " ".join(command))
    result = subprocess.run(command)
    if result.returncode != 0:
        raise DeviceError(f"`{' '.join(command)}` failed with exit code {result.returncode}{hint}")


def _ensure_user() -> None:
    for group in GROUPS:  # render is missing on some older images; SupplementaryGroups= needs it
        if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
            _run(["groupadd", "--system", group])
    if subprocess.run(["id", NAME], capture_output=True).returncode != 0:
        _run(["useradd", "--system", "--user-group", "--groups", ",".join(GROUPS), "--home-dir", str(STATE),
              "--no-create-home", "--shell", "/usr/sbin/nologin", NAME])


def _ensure_venv(args: argparse.Namespace, platform: str) -> None:
    python = args.python or ("/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable)
    if not (Path(args.venv) / "bin" / "python").exists():
        _run(venv_command(python, args.venv, platform), " (Debian and Raspberry Pi OS: apt install python3-venv)")
    spec = f"{args.package}[device]" if args.package and Path(args.package).exists() else args.package
    _run([str(Path(args.venv) / "bin" / "python"), "-m", "pip", "install", "--upgrade", spec or package_spec()])
    if platform == "pi" and subprocess.run([str(Path(args.venv) / "bin" / "python"), "-c", "import picamera2"],
                                           capture_output=True).returncode != 0:
        log.warning("picamera2 is not importable in %s: sudo apt install python3-picamera2", args.venv)


def _copy_models(src: Path | None, dst: Path) -> None:
    """The shipped emotion models with their manifests and the face models, from ``src`` or from where ``run``
    finds them."""
    model = Path(cfgmod.DEFAULT_MODEL).name
    sources = {name: (src or locations.face_models_dir()) / name for name in FACE_MODELS}
    for shipped in locations.SHIPPED_MODELS.values():
        for name in (shipped, manifest_path_for(shipped).name):
            sources[name] = (src or locations.bundled_models()) / name
    dst.mkdir(parents=True, exist_ok=True)
    for name, path in sources.items():
        if path.is_file():
            write_atomic(dst / name, path.read_bytes())
            log.info("installed %s", dst / name)
    missing = [name for name in sources if not (dst / name).is_file()]
    if any(name in FACE_MODELS for name in missing):
        log.warning("face models missing in %s: %s", dst, provision_command(dst))
    if model in missing:
        log.warning("emotion model missing in %s: make one with `python -m convert quantize` and copy the "
                    ".tflite and its .json there", dst)


def install(args: argparse.Namespace) -> None:
    root = Path(args.root) if args.root else Path("/")
    if args.root is None and os.geteuid() != 0:
        raise DeviceError("install-service needs root: sudo .venv/bin/python -m device install-service")
    if not (locations.templates() / f"{NAME}.service").is_file():
        raise DeviceError(f"{locations.templates()} holds no {NAME}.service: reinstall {DISTRIBUTION}")
    platform = detect_platform() if args.platform == "auto" else args.platform
    log.info("installing %s for platform %s", NAME, platform)
    config_text = render_config(args.source)
    if args.root is None:
        _ensure_user()
        _ensure_venv(args, platform)
    _copy_models(Path(args.models) if args.models else None, root / STATE.relative_to("/") / "models")
    config = root / "etc" / NAME / "device.toml"
    if config.exists() and not args.force_config:
        log.info("kept the existing %s (--force-config replaces it)", config)
    else:
        write_atomic(config, config_text.encode())
    units = root / "etc/systemd/system"
    write_atomic(units / f"{NAME}.service", render_unit(args.venv).encode())
    dropin = units / f"{NAME}.service.d" / "jetson.conf"
    if platform == "jetson":
        write_atomic(dropin, (locations.templates() / "jetson.conf").read_bytes())
    elif dropin.exists():
        dropin.unlink()
    if args.root is not None:
        log.info("files written under %s; skipped the user, the venv and systemctl", root)
        return
    for path in (STATE, STATE / "models"):  # the service user owns its state, as StateDirectory= would
        shutil.chown(path, NAME, NAME)
    _run(["systemctl", "daemon-reload"])
    _run(["systemctl", "enable", f"{NAME}.service"])
    if not args.no_start:
        _run(["systemctl", "restart", f"{NAME}.service"])
    log.info("installed; follow it with: journalctl -fu %s", NAME)
