"""The test command itself: offline it skips what needs the package index, and it ends by saying what it did
not run and why (a browser, a broker, the index)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_offline_run_skips_the_index_tests_and_says_why(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           # pip as on a machine without network: no index, no mirror, no local wheels
           "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
           "PIP_EXTRA_INDEX_URL": "",
           "PATH": os.path.dirname(sys.executable)}  # and no chromium
    tests = ["tests/test_packaging.py", "tests/test_web.py::test_chromium_shows_the_live_video_with_boxes"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-r", "N", *tests],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # -r N: without -ra too
    assert result.returncode == 0, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("3 passed, 3 skipped")
    summary = lines[next(i for i, line in enumerate(lines) if "not run, and why" in line) + 1:-1]
    assert summary == [
        "   2 skipped: the package index is unreachable (pip download setuptools: ERROR: No matching distribution "
        "found for setuptools>=77); these tests pip-install a wheel",
        "   1 skipped: chromium is not installed (apt-get install chromium; .ci/run does)"]


def test_the_network_marker_is_registered():
    result = subprocess.run([sys.executable, "-m", "pytest", "--markers"], cwd=ROOT, capture_output=True, text=True)
    assert "@pytest.mark.network: needs the package index" in result.stdout
