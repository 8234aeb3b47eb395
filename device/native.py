"""Taming native libraries: their stderr chatter, mediapipe's optional TensorFlow import, the system
libraries they need (named with the command that installs them), and the CPU they need."""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import platform
import re
import struct
import sys
import threading
from typing import Iterator

log = logging.getLogger(__name__)
_quiet = False  # quiet_native_logs() ran
AT_HWCAP = 16  # the auxiliary vector's CPU-feature word (elf.h)
HWCAP_ATOMICS = 1 << 8  # arm64: Armv8.1 atomics (LSE), "atomics" in /proc/cpuinfo (asm/hwcap.h)

# What MediaPipe's native library links against beyond a base system, and the Debian / Raspberry Pi OS
# packages that bring it: a debootstrap or "Lite" image lacks both.
SYSTEM_LIBRARIES = {"libEGL.so.1": "libegl1", "libGLESv2.so.2": "libgles2"}
MISSING = re.compile(r"([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file")

# What LiteRT, MediaPipe and absl/glog print at INFO and WARNING level: "INFO: Created TensorFlow Lite
# XNNPACK delegate", "INFO: [accelerator_registry.cc:43] DestroyAccelerator", "WARNING: Logging before
# InitGoogle()", "W0000 00:00:... inference_runner_litert.cc] Input tensor memory is not aligned"; and
# OpenCV's "[ WARN:0@3.5] global cap.cpp:212 open VIDEOIO(V4L2): ...".
CHATTER = re.compile(rb"^(?:(?:INFO|WARNING|VERBOSE)\b|[IW]\d{4} |\[ ?(?:INFO|WARN):)")


def quiet_native_logs() -> None:
    """From now on, drop native libraries' INFO and WARNING lines and keep everything else.

    C++ code writes straight to file descriptor 2, out of reach of Python's logging and of the
    environment variables (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL) that this LiteRT ignores.  So fd 2
    becomes a pipe that a thread filters into the real stderr (native ERROR and FATAL lines pass),
    and Python's own ``sys.stderr`` writes to the real stderr directly.  Exceptions ignored in
    ``__del__`` (MediaPipe's, on error exits) go to the debug log.  Call it before logging is set up.
    """
    global _quiet
    if _quiet:  # once per process
        return
    try:
        real_fd = os.dup(2)
    except OSError:  # no stderr at all
        return
    _quiet = True
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    real = open(real_fd, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                errors="backslashreplace", closefd=False)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stderr = real
    if faulthandler.is_enabled():
        faulthandler.enable(real)
    thread = threading.Thread(target=_filter, args=(read_fd, real_fd), name="native-stderr", daemon=True)
    thread.start()
    sys.unraisablehook = _unraisable_to_debug

    def finish() -> None:  # teardown chatter goes nowhere; what was written so far is passed on first
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        thread.join(timeout=1.0)

    atexit.register(finish)


def _filter(read_fd: int, real_fd: int) -> None:
    pending = b""
    with open(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            keep = b"".join(line + b"\n" for line in lines if not CHATTER.match(line))
            if keep:
                os.write(real_fd, keep)
    if pending and not CHATTER.match(pending):
        os.write(real_fd, pending + b"\n")


def _unraisable_to_debug(unraisable) -> None:
    log.debug("ignored in %r: %s", unraisable.object, unraisable.exc_value,
              exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


def missing_library_message(what: str, exc: OSError | ImportError) -> str | None:
    """One line for a native library that cannot load because a shared library is missing (the dynamic
    loader's "libEGL.so.1: cannot open shared object file"), with the command that installs it; None for
    other errors."""
    match = MISSING.search(str(exc))
    if match is None:
        return None
    name = match.group(1)
    if name in SYSTEM_LIBRARIES:
        packages = " ".join(SYSTEM_LIBRARIES.values())  # both: the second would be missing next
        return (f"{what} cannot load: {name} is missing; install the system libraries it needs: "
                f"sudo apt install {packages}")
    return f"{what} cannot load: the system library {name} is missing; install the package that provides it"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence C++ log lines written straight to fd 2 (the "Sparsity tensors" warnings at load)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def without_tensorflow() -> Iterator[None]:
    """mediapipe imports TensorFlow when it happens to be installed (for API docs and file I/O it
    doesn't need here): 18 s and 1 GB for nothing.  Hide it during mediapipe's import."""
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ModuleNotFoundError
    try:
        yield
    finally:
        if hide:
            del sys.modules["tensorflow"]


def lacks_arm64_atomics(auxv: bytes | None = None) -> bool:
    """True on an arm64 CPU without Armv8.1 atomics (a Raspberry Pi 4's Cortex-A72, a Jetson Nano's A57), read
    from ``auxv`` (default: this process's auxiliary vector, where glibc and MediaPipe read the CPU's features)."""
    if auxv is None:
        if platform.machine() != "aarch64":
            return False
        try:
            with open("/proc/self/auxv", "rb") as f:
                auxv = f.read()
        except OSError:
            return False  # unknown: let MediaPipe decide
    for key, value in struct.iter_unpack("<QQ", auxv[:len(auxv) // 16 * 16]):
        if key == AT_HWCAP:
            return not value & HWCAP_ATOMICS
    return False
