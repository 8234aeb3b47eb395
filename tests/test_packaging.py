"""The installed wheel works from any folder: bundled model, per-installation face models, systemd files.

Builds the wheel, installs it (not editable) with its [device] extra into a fresh venv from the
package index (about a minute), and runs it from a temporary folder.  Marked slow, and network: they
are skipped, with the reason, when the package index cannot be reached (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from device.facemodels import FACE_MODELS

ROOT = Path(__file__).resolve().parents[1]
OWN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: |error: )")


def sh(*args, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the wheel with [device]; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A clean copy: setuptools builds in the source tree, and a stale build/ there could leak into the wheel.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "face_detection_*"))
    built = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", source, cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("edge_emotion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"device/models/emotion_ferplus.tflite", "device/models/emotion_ferplus.json",
            "device/models/emotion_fer2013.tflite", "device/models/emotion_fer2013.json",
            "device/systemd/emotion-device.service", "device/systemd/device.toml"} <= set(names)
    assert not [n for n in names if n.endswith((".keras", ".png")) or Path(n).name in FACE_MODELS]
    venv = tmp / "venv"
    made = sh(sys.executable, "-m", "venv", venv, cwd=tmp)
    assert made.returncode == 0, made.stderr
    pip = sh(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[device]", cwd=tmp)
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EMOTION_DEVICE_FACE_MODELS")}
    return {**env, **extra}


@pytest.mark.slow
@pytest.mark.network
def test_installed_wheel_runs_the_demo_from_any_folder(installed, tmp_path):
    venv = installed.parent
    where = sh(installed / "python", "-c", "import device; print(device.__file__)", cwd=tmp_path, env=clean_env())
    assert where.stdout.strip().startswith(str(venv / "lib")), where.stdout  # the wheel, not the checkout

    # No face models yet: one line naming the folder and the exact command.
    data = venv / "share" / "emotion-device" / "models"
    missing = sh(installed / "emotion-device", "run", "--source", "demo", "--max-frames", "3", cwd=tmp_path,
                 env=clean_env())
    assert missing.returncode == 78
    assert missing.stderr.splitlines()[-1] == (
        f"error: face-detection model missing: {data / 'face_detection_full_range_sparse.tflite'}; "
        "provision it with `emotion-device models`")

    # Provisioned into the installation's data folder (copied: no network), `models` and `run` agree.
    data.mkdir(parents=True)
    for name in FACE_MODELS:
        shutil.copy(ROOT / "models" / name, data / name)
    models = sh(installed / "emotion-device", "models", cwd=tmp_path, env=clean_env())
    assert models.returncode == 0, models.stderr
    assert sorted(models.stdout.split()) == sorted(str(data / name) for name in FACE_MODELS)

    result = sh(installed / "emotion-device", "run", "--source", "demo", "--max-frames", "8", "--csv", "out.csv",
                cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not OWN.match(line)] == []  # quiet
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("timestamp,") and len(rows) == 1 + 16  # 2 demo faces a frame
    assert "16 CSV rows in out.csv" in result.stdout

    # The environment variable points run elsewhere.
    other = sh(installed / "emotion-device", "run", "--source", "demo", "--max-frames", "1", cwd=tmp_path,
               env=clean_env(EMOTION_DEVICE_FACE_MODELS=str(tmp_path / "none")))
    assert other.returncode == 78 and str(tmp_path / "none") in other.stderr


@pytest.mark.slow
@pytest.mark.network
def test_installed_wheel_installs_the_service(installed, tmp_path):
    root = tmp_path / "root"
    result = sh(installed / "emotion-device", "install-service", "--root", root, "--platform", "generic",
                "--venv", installed.parent, cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    unit = (root / "etc/systemd/system/emotion-device.service").read_text()
    assert f"ExecStart={installed.parent}/bin/python -m device run" in unit
    assert (root / "etc/emotion-device/device.toml").read_text() == (ROOT / "systemd/device.toml").read_text()
    models = root / "var/lib/emotion-device/models"
    for name in ("emotion_ferplus", "emotion_fer2013"):  # the default, and FER2013's selectable model
        assert (models / f"{name}.tflite").read_bytes() == (ROOT / f"models/{name}.tflite").read_bytes()
        assert (models / f"{name}.json").is_file()
    # What the service's venv would get: the wheel file this venv was installed from.
    spec = sh(installed / "python", "-c", "from device.install import package_spec; print(package_spec())",
              cwd=tmp_path, env=clean_env())
    wheel_url = r"edge-emotion\[device\] @ file:///.*/edge_emotion-[\d.]+-py3-none-any\.whl"
    assert re.fullmatch(wheel_url, spec.stdout.strip()), spec.stdout + spec.stderr


def test_face_model_folder_precedence(monkeypatch, tmp_path):
    from device import locations

    monkeypatch.delenv(locations.FACE_MODELS_ENV, raising=False)
    assert locations.face_models_dir("some/dir") == Path("some/dir")  # the flag first
    assert locations.face_models_dir() == ROOT / "models"  # a checkout's models/
    monkeypatch.setenv(locations.FACE_MODELS_ENV, str(tmp_path / "env"))
    assert locations.face_models_dir() == tmp_path / "env"  # then the environment variable
    assert locations.face_models_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv(locations.FACE_MODELS_ENV)
    monkeypatch.setattr(locations, "is_checkout", lambda: False)  # as from an installed wheel
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert locations.face_models_dir() == tmp_path / "venv/share/emotion-device/models"
    monkeypatch.setattr(sys, "prefix", "/usr")  # no venv: the user's XDG data folder
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert locations.face_models_dir() == tmp_path / "xdg/emotion-device/models"


def test_checkout_finds_the_bundled_files():
    from device import config, locations

    assert locations.is_checkout()
    assert Path(config.DEFAULT_MODEL) == ROOT / "models" / "emotion_ferplus.tflite"
    assert locations.model_path("fer2013") == ROOT / "models" / "emotion_fer2013.tflite"
    assert locations.model_path("runs/x.tflite") == Path("runs/x.tflite")
    assert (locations.templates() / "emotion-device.service").is_file()


def test_unwritable_face_model_folder_is_one_clear_error(monkeypatch, tmp_path):
    from device import facemodels
    from device.errors import ModelError

    real = {name: (ROOT / "models" / name).read_bytes() for name in FACE_MODELS}
    monkeypatch.setattr(facemodels, "_from_wheel", lambda names, wheel: {n: real[n] for n in names})
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder would go")
    with pytest.raises(ModelError, match=r"cannot write .*file/models/face_detection.*--face-models DIR or "
                                         r"\$EMOTION_DEVICE_FACE_MODELS"):
        facemodels.provision(blocker / "models", wheel="local.whl")
    assert facemodels.provision(tmp_path / "ok", wheel="local.whl") == [tmp_path / "ok" / n for n in FACE_MODELS]
    assert all((tmp_path / "ok" / n).read_bytes() == real[n] for n in FACE_MODELS)
