"""Error lines say what is really wrong: a folder that takes no files, a file that is not a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device import outpaths
from device.errors import ModelError, OutputError
from tests.conftest import ROOT


def run_device(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_csv_in_proc_says_the_folder_takes_no_files(face_models):
    """It said "No such file or directory" about /proc, which exists."""
    result = run_device("--source", "demo", "--max-frames", "1", "--csv", "/proc/x.csv")
    assert result.returncode == 73
    assert error_lines(result) == ["error: --csv /proc/x.csv: cannot create files in /proc: the folder exists but "
                                   "takes no new files (a virtual filesystem such as /proc)"]


def test_output_checks_name_the_path_asked_for(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder would go")
    with pytest.raises(OutputError, match=rf"^--csv {blocker}/x\.csv: {blocker} is not a folder$"):
        outpaths.check_file(blocker / "x.csv", "--csv")
    outpaths.check_file(tmp_path / "new" / "x.csv", "--csv")  # a folder still to be made is fine


def test_a_file_that_is_not_a_model_is_called_that(tmp_path):
    """--model README.md talked about a missing README.json."""
    result = run_device("--source", "demo", "--max-frames", "1", "--model", "README.md")
    assert result.returncode == 78
    assert error_lines(result) == ["error: README.md is not a TFLite model: --model takes a .tflite file (with its "
                                   "NAME.json manifest beside it)"]
    from device.classifier import load_manifest
    manifest = ROOT / "models" / "emotion_fer2013.json"  # the manifest given for the model
    with pytest.raises(ModelError, match="is not a TFLite model"):
        load_manifest(manifest)
    assert load_manifest(ROOT / "models" / "emotion_fer2013.tflite").labels[0] == "angry"
