"""``python -m device models``: provision MediaPipe's face-detection models with pinned checksums.

MediaPipe 1.x wheels bundle no model, and nothing is downloaded at run time.
This command fetches both models once: from MediaPipe's asset bucket when it
is reachable, otherwise from the ``mediapipe==0.10.21`` wheel on the package
index, which contains both files.  Every file must match its pinned sha256.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from device.errors import ModelError
from device.locations import AUTO, FACE_MODELS_ENV, face_models_dir
from device.manifest import write_atomic

log = logging.getLogger(__name__)

# name -> sha256 (the files inside mediapipe 0.10.21's wheel)
FACE_MODELS = {
    "face_detection_short_range.tflite": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    "face_detection_full_range_sparse.tflite": "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
}
OFFICIAL_URL = "https://storage.googleapis.com/mediapipe-assets/{name}"
WHEEL = "mediapipe==0.10.21"
WHEEL_DIR = "mediapipe/modules/face_detection/"
PROVISION_COMMAND = "python -m device models"


def provision_command(models_dir: str | Path) -> str:
    """The exact command that provisions ``models_dir`` (the folder ``run`` reads)."""
    program = "emotion-device" if Path(sys.argv[0]).name == "emotion-device" else PROVISION_COMMAND.rsplit(" ", 1)[0]
    command = f"{program} models"
    if Path(models_dir).resolve() != face_models_dir().resolve():
        command += f" --face-models {shlex.quote(str(models_dir))}"
    return command


def model_path(models_dir: str | Path, name: str) -> Path:
    """The path of a provisioned face model; a clear error naming the command when it is missing."""
    path = Path(models_dir) / name
    if not path.is_file():
        raise ModelError(f"face-detection model missing: {path}; provision it with `{provision_command(models_dir)}`")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_official(name: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(OFFICIAL_URL.format(name=name), timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.info("official location unreachable for %s (%s)", name, exc)
        return None


def _from_wheel(names: list[str], wheel: str | None) -> dict[str, bytes]:
    """Extract the models from the mediapipe 0.10.21 wheel: a given file, or one pip downloads."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            # The model files are the same in every build; ask for one that exists, whatever this machine is.
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--dest", tmp, WHEEL]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("mediapipe-*.whl"))
            if result.returncode != 0 or not wheels:
                tail = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise ModelError(f"cannot fetch {WHEEL} from the package index: {tail}")
            wheel = str(wheels[0])
        try:
            with zipfile.ZipFile(wheel) as archive:
                return {name: archive.read(WHEEL_DIR + name) for name in names}
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{wheel} does not hold the face models: {exc}") from None


def provision(models_dir: str | Path = AUTO, wheel: str | None = None, online: bool = True,
              timeout: float = 10.0) -> list[Path]:
    """Put both face models in ``models_dir`` (``auto``: the folder ``run`` reads, see device.locations);
    files already there with the right checksum are kept."""
    models_dir = face_models_dir(models_dir)
    missing = []
    for name, digest in FACE_MODELS.items():
        path = models_dir / name
        if path.is_file() and _sha256(path.read_bytes()) == digest:
            log.info("%s: present, checksum ok", path)
        else:
            missing.append(name)
    fetched: dict[str, bytes] = {}
    if online and wheel is None:
        for name in missing:
            data = _from_official(name, timeout)
            if data is not None and _sha256(data) == FACE_MODELS[name]:
                fetched[name] = data
            elif data is not None:
                log.info("%s from the official location has another checksum; using the wheel", name)
    rest = [name for name in missing if name not in fetched]
    if rest:
        fetched.update(_from_wheel(rest, wheel))
    for name, data in fetched.items():
        if _sha256(data) != FACE_MODELS[name]:
            raise ModelError(f"{name}: checksum mismatch ({_sha256(data)}), refusing to install it")
        try:
            write_atomic(models_dir / name, data)
        except OSError as exc:  # e.g. a root-owned venv
            raise ModelError(f"cannot write {models_dir / name}: {exc.strerror or exc}; choose another folder "
                             f"with --face-models DIR or ${FACE_MODELS_ENV} (run reads the same)") from None
        log.info("%s: installed, checksum ok", models_dir / name)
    return [models_dir / name for name in FACE_MODELS]
