#!/usr/bin/env bash
# The device on arm64, emulated: a Debian 12 arm64 root (Raspberry Pi OS Bookworm's base, Python 3.11) run by
# QEMU user-mode as a Raspberry Pi 5's Cortex-A76, the wheel built from this checkout with [device] in a venv
# inside it, the same runs on this x86-64 host, and one summary whose values are checked
# (scripts/arm64_check.py).  Run it as root on Debian or Ubuntu x86-64, with apt and PyPI reachable:
#
#     sudo scripts/arm64_check.sh
#
# It installs qemu-user-static, binfmt-support, debootstrap and python3-venv from apt, builds the root once
# and keeps it (with its venv and pip cache) in the cache folder, then on each run: reinstalls the wheel,
# provisions the face models (python -m device models), and runs on both machines the demo
# (run --source demo), bench, a folder of real faces (FER2013 val/ faces in camera-sized frames) and the int8
# accuracy of the bundled model on a val/ sample.  Then, as a Raspberry Pi 4's Cortex-A72 (Armv8.0): the demo
# must run or stop with one error line, and the classifier must give the host's outputs.
# Exit status: 0 passed, 1 a check failed, 69 the host cannot run it.
# Each run's logs and CSVs stay in CACHE/last.
#
# Environment: ARM64_CHECK_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/edge-emotion/arm64),
# ARM64_CHECK_DATA (FER2013 with val/; default ../shared/datasets/fer2013 beside the checkout),
# ARM64_CHECK_EVERY (every Nth val/ image of each class; default 5, 721 images; 1 is all of val/),
# ARM64_CHECK_FRAMES (frames of the demo, bench and face-folder runs; default 40), ARM64_CHECK_PI4 (0 skips
# the Cortex-A72 runs), ARM64_CHECK_MIRROR (default http://deb.debian.org/debian).
#
# Mounts: QEMU 7.2 shows the x86 host's /proc/cpuinfo to the emulated programs, and LiteRT's CPU detection
# crashes on it, so a Raspberry Pi-style cpuinfo is bound over it.  Every mount (proc, sys, dev, that cpuinfo,
# the work folder) is made in a private mount namespace (unshare -m), so none outlives the script, however it
# ends; a trap also undoes them on the way out.
set -euo pipefail

die() { echo "error: $*" >&2; exit "${2:-69}"; }
say() { echo "arm64 check: $*" >&2; }
SELF=$(realpath "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

if [ -z "${ARM64_CHECK_NAMESPACE:-}" ]; then
    [ "$(id -u)" = 0 ] || die "run it as root: debootstrap, chroot and mounts need it"
    [ "$(uname -m)" = x86_64 ] || die "it runs on x86-64 hosts (it emulates arm64), not on $(uname -m)"
    command -v apt-get >/dev/null || die "it needs Debian or Ubuntu (apt-get)"
    missing=()
    for p in qemu-user-static binfmt-support debootstrap python3-venv ca-certificates git; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    exec env ARM64_CHECK_NAMESPACE=1 unshare --mount --propagation private "$SELF" "$@"
fi

# --- from here on, in a private mount namespace ------------------------------------------------------------
START=$SECONDS
CACHE=${ARM64_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-emotion/arm64}
DATA=${ARM64_CHECK_DATA:-$REPO/../shared/datasets/fer2013}
EVERY=${ARM64_CHECK_EVERY:-5}
FRAMES=${ARM64_CHECK_FRAMES:-40}
MIRROR=${ARM64_CHECK_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/bookworm-arm64
HOSTVENV=$CACHE/host-venv
WORK=$CACHE/last
# QEMU's models of a Raspberry Pi 5's and a Pi 4's cores; its default "max" has features no Pi has, and QEMU 7.2
# gave other int8 outputs on it
PI5=cortex-a76
PI4=cortex-a72
# libegl1, libgles2: MediaPipe; libgl1, libglib2.0-0, libsm6, libice6, libxext6: opencv-contrib-python's Qt
ROOT_PACKAGES=python3,python3-venv,ca-certificates,libegl1,libgles2,libgl1,libglib2.0-0,libsm6,libice6,libxext6
[ -d "$DATA/val" ] || die "no FER2013 val/ at $DATA (set ARM64_CHECK_DATA)"
DATA=$(realpath "$DATA")
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO is not a git checkout (the wheel is built from it)"

MOUNTED=()
mounted() { MOUNTED+=("$1"); }
unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" || true
    done
    MOUNTED=()
}
trap unmount_all EXIT
trap 'say interrupted; exit 130' INT
trap 'exit 143' TERM

nothing_mounted_under() {
    ! awk '{print $5}' /proc/self/mountinfo | grep -q "^$1\(/\|$\)" \
        || die "something is mounted under $1; not touching it"
}

register_qemu() {
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    grep -qs '^enabled' "$entry" || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    # F: the kernel opens QEMU when registering, so it runs inside the root without a copy there
    grep -qs '^enabled' "$entry" && grep -qs '^flags:.*F' "$entry" \
        || die "cannot register QEMU for arm64 programs (binfmt_misc; update-binfmts --enable qemu-aarch64)"
}

build_root() {
    [ -f "$ROOT/.complete" ] && { say "reusing the root in $ROOT"; return; }
    nothing_mounted_under "$ROOT.partial"
    rm -rf --one-file-system "$ROOT.partial"
    say "building a Debian 12 arm64 root in $ROOT (once; 5 to 15 min)"
    mkdir -p "$CACHE"
    local t=$SECONDS
    debootstrap --arch=arm64 --variant=minbase --include="$ROOT_PACKAGES" bookworm "$ROOT.partial" "$MIRROR" \
        > "$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log" 1
    touch "$ROOT.partial/.complete"
    nothing_mounted_under "$ROOT"
    rm -rf --one-file-system "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    say "root built ($((SECONDS - t)) s)"
}

cpuinfo() {  # cpuinfo CORE: a Raspberry Pi's /proc/cpuinfo, one block per host CPU (as /sys shows them)
    local features part variant revision model i
    case $1 in
        "$PI5") features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc"
                features+=" dcpop asimddp"
                part=0xd0b variant=0x4 revision=1 model="Raspberry Pi 5 Model B Rev 1.0" ;;
        "$PI4") features="fp asimd evtstrm crc32 cpuid"
                part=0xd08 variant=0x0 revision=3 model="Raspberry Pi 4 Model B Rev 1.5" ;;
    esac
    for ((i = 0; i < $(nproc); i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\n' "$i" "$features"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\n'
        printf 'CPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
    done
    printf 'Model\t\t: %s\n' "$model"
}

enter_root() {  # the mounts the programs inside need; all in this namespace
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mkdir -p "$ROOT/work"
    mount -t proc proc "$ROOT/proc" && mounted "$ROOT/proc"
    mount --bind "$WORK/cpuinfo" "$ROOT/proc/cpuinfo" && mounted "$ROOT/proc/cpuinfo"
    mount --rbind /sys "$ROOT/sys" && mounted "$ROOT/sys"
    mount --rbind /dev "$ROOT/dev" && mounted "$ROOT/dev"
    mount --bind "$WORK" "$ROOT/work" && mounted "$ROOT/work"
}

in_root() {  # in_root CORE COMMAND...: run in the root's /work as that core; PIP_CERT: the host's trust store
    local core=$1; shift
    timeout --foreground --kill-after=30 1800 env QEMU_CPU="$core" chroot "$ROOT" /usr/bin/env -i -C /work \
        PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$core" PIP_CERT=/work/ca.crt \
        ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} "$@"
}

on() {  # on host|arm64|pi4 ARGS...: python ARGS in that machine's work folder
    local machine=$1; shift
    case $machine in
        host) timeout --foreground --kill-after=30 1800 env -C "$WORK" -u PYTHONPATH -u EMOTION_DEVICE_FACE_MODELS \
                  "$HOSTVENV/bin/python" "$@" ;;
        arm64) in_root "$PI5" python "$@" ;;
        pi4) in_root "$PI4" python "$@" ;;
    esac
}

step() {  # step MACHINE LOG ARGS...: one run, its output in LOG (relative to WORK); a failure names the log
    local machine=$1 log=$2 t=$SECONDS; shift 2
    if ! on "$machine" "$@" > "$WORK/$log" 2>&1; then
        tail -n 5 "$WORK/$log" >&2
        die "$machine: python $* failed; see $WORK/$log" 1
    fi
    say "$machine: $(basename "$log" .log) ($((SECONDS - t)) s)"
}

runs() {  # runs MACHINE: the runs the summary compares, into WORK/MACHINE
    local m=$1
    mkdir -p "$WORK/$m"
    step "$m" "$m/models.log" -m device models
    step "$m" "$m/demo.log" -m device run --source demo --max-frames "$FRAMES" --csv "$m/demo.csv"
    step "$m" "$m/bench.log" -m device bench --source demo --frames "$FRAMES" --warmup 5
    step "$m" "$m/faces.log" -m device run --source faces --detect-every 1 --workers 1 --csv "$m/faces.csv"
    step "$m" "$m/measure.log" arm64_check.py measure val "$m/measure.json"
}

register_qemu
build_root
nothing_mounted_under "$WORK"
rm -rf --one-file-system "$WORK"
mkdir -p "$WORK/src" "$WORK/dist"
cp "$REPO/scripts/arm64_check.py" "$WORK/"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/ca.crt"
cpuinfo "$PI5" > "$WORK/cpuinfo"

# The wheel, from a clean copy of the checkout's files (a stale build/ could leak into it)
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf -) \
    | tar -xf - -C "$WORK/src"
[ -x "$HOSTVENV/bin/python" ] || python3 -m venv "$HOSTVENV"
say "building the wheel and installing it on the host"
"$HOSTVENV/bin/python" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src" > "$WORK/wheel.log" 2>&1 \
    || die "the wheel did not build; see $WORK/wheel.log" 1
WHEEL=$(cd "$WORK" && ls dist/edge_emotion-*.whl)
{ "$HOSTVENV/bin/python" -m pip install -q "$WORK/$WHEEL[device]" scikit-learn \
    && "$HOSTVENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WORK/$WHEEL"; } \
    > "$WORK/host-pip.log" 2>&1 || die "pip install on the host failed; see $WORK/host-pip.log" 1
# the same versions of every dependency on both machines
"$HOSTVENV/bin/python" -m pip freeze --exclude edge-emotion > "$WORK/constraints.txt"

enter_root
in_root "$PI5" /bin/true || die "arm64 programs do not run in $ROOT (QEMU, binfmt_misc)"
[ -x "$ROOT/opt/venv/bin/python" ] || in_root "$PI5" /usr/bin/python3 -m venv /opt/venv
t=$SECONDS
say "installing the wheel with [device] in the root's venv (emulated pip; minutes the first time)"
in_root "$PI5" python -m pip install -q -c constraints.txt "$WHEEL[device]" scikit-learn > "$WORK/pip.log" 2>&1 \
    && in_root "$PI5" python -m pip install -q --no-deps --force-reinstall "$WHEEL" >> "$WORK/pip.log" 2>&1 \
    || { tail -n 5 "$WORK/pip.log" >&2; die "pip install in the root failed; see $WORK/pip.log" 1; }
say "arm64: pip install ($((SECONDS - t)) s)"

step host prepare.log arm64_check.py prepare "$DATA" . --every "$EVERY" --frames "$FRAMES"
runs host
runs arm64
pi4=()
if [ "${ARM64_CHECK_PI4:-1}" != 0 ]; then  # an Armv8.0 core, as a Raspberry Pi 4's
    mkdir -p "$WORK/pi4"
    cpuinfo "$PI4" > "$WORK/cpuinfo"  # the same file, bound over /proc/cpuinfo: rewritten in place
    # the demo may stop here (the summary says how); the classifier alone must run
    on pi4 -m device run --source demo --max-frames 2 --csv pi4/demo.csv > "$WORK/pi4/demo.log" 2>&1 || true
    step pi4 pi4/measure.log arm64_check.py measure val pi4/measure.json
    pi4=(--pi4 pi4)
fi
unmount_all

status=0
on host arm64_check.py summary host arm64 --frames "$FRAMES" "${pi4[@]}" || status=$?
say "$((SECONDS - START)) s in all; logs in $WORK"
exit "$status"
