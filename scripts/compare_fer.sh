#!/usr/bin/env bash
# Side by side with the `fer` package (https://pypi.org/project/fer/) on the same video, in one sitting:
# both pinned to one core (taskset -c CORE), then both at their defaults on every core; runs alternate
# (ours, fer, ours, fer, ...) so that drift in the machine's load hits both alike.  Prints each run's fps,
# the medians and the ratios.
#
#   scripts/compare_fer.sh VIDEO [ROUNDS] [FRAMES]      (defaults: 5 rounds of 300 frames)
#
# Environment: PYTHON (the project's venv python; default .venv/bin/python), FER_VENV (where fer's venv
# goes; default .venv-fer, made once), CORE (the core for pinned runs; default 1), DEVICE_FLAGS (extra
# flags for `python -m device bench`, e.g. "--detect-every 1").
#
# fer is installed with --no-deps plus what `from fer.fer import FER; FER(mtcnn=False)` imports: TensorFlow
# (its TFLite interpreter runs fer's model), OpenCV 4 (the Haar cascade: OpenCV 5's wheels lack the cascade
# files that fer loads from cv2.data), Pillow, requests, and setuptools for pkg_resources.  facenet-pytorch/torch (MTCNN only), moviepy, pandas and tqdm (fer.classes, video
# helpers) are not needed.
set -euo pipefail

VIDEO=${1:?usage: scripts/compare_fer.sh VIDEO [ROUNDS] [FRAMES]}
ROUNDS=${2:-5}
FRAMES=${3:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
FER_VENV=${FER_VENV:-$ROOT/.venv-fer}
CORE=${CORE:-1}
DEVICE_FLAGS=${DEVICE_FLAGS:-}
FER_VERSION=25.10.3

[ -f "$VIDEO" ] || { echo "error: no video at $VIDEO" >&2; exit 66; }
VIDEO=$(realpath "$VIDEO")  # the runs below start in the repository root
[ -x "$PYTHON" ] || { echo "error: no project python at $PYTHON (set PYTHON)" >&2; exit 69; }
command -v taskset >/dev/null || { echo "error: taskset missing (apt-get install util-linux)" >&2; exit 69; }

if [ ! -f "$FER_VENV/.complete" ]; then
    echo "making fer's venv in $FER_VENV (once)" >&2
    "$PYTHON" -m venv "$FER_VENV"
    "$FER_VENV/bin/pip" install -q --upgrade pip
    "$FER_VENV/bin/pip" install -q --no-deps "fer==$FER_VERSION"
    "$FER_VENV/bin/pip" install -q "${FER_TENSORFLOW:-tensorflow-cpu}" "opencv-contrib-python-headless<5" pillow requests \
        "setuptools<81"  # pip then lists fer's other requirements as missing: they are not needed for FER(mtcnn=False)
    "$FER_VENV/bin/python" -c "import cv2, fer.fer; assert cv2.data.haarcascades" || { echo "error: fer's venv is broken" >&2; exit 1; }
    touch "$FER_VENV/.complete"
fi

ours() {  # $1: a prefix command (taskset ...) or nothing
    $1 "$PYTHON" -m device bench --source "$VIDEO" --frames "$FRAMES" --warmup 20 --no-reference $DEVICE_FLAGS \
        2>/dev/null | sed -n 's/^end-to-end: \([0-9.]*\) fps$/\1/p'
}
theirs() {
    TF_CPP_MIN_LOG_LEVEL=3 $1 "$FER_VENV/bin/python" "$ROOT/scripts/fer_fps.py" "$VIDEO" --frames "$FRAMES" \
        2>/dev/null | sed -n 's/^end-to-end: \([0-9.]*\) fps$/\1/p'
}
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

cd "$ROOT"
report=""
for mode in pinned unpinned; do
    prefix=""; [ "$mode" = pinned ] && prefix="taskset -c $CORE"
    a=""; b=""
    for round in $(seq "$ROUNDS"); do
        x=$(ours "$prefix"); y=$(theirs "$prefix")
        [ -n "$x" ] && [ -n "$y" ] || { echo "error: a run printed no fps ($mode, round $round)" >&2; exit 1; }
        echo "$mode round $round: ours $x fps, fer $y fps" >&2
        a+="$x"$'\n'; b+="$y"$'\n'
    done
    ma=$(printf '%s' "$a" | median); mb=$(printf '%s' "$b" | median)
    label="one core (taskset -c $CORE)"; [ "$mode" = unpinned ] && label="all $(nproc) cores"
    report+=$(awk -v l="$label" -v a="$ma" -v b="$mb" 'BEGIN {printf "| %s | %.1f | %.1f | %.1fx |", l, a, b, a / b}')$'\n'
done
echo "video: $VIDEO, $ROUNDS alternating rounds of $FRAMES frames, medians; fer $FER_VERSION (FER(mtcnn=False))"
echo "| cores | ours (fps) | fer (fps) | ratio |"
echo "|---|---|---|---|"
printf '%s' "$report"
