"""How the daemon talks to systemd: sd_notify messages out, signals in.

:class:`SdNotifier` speaks the notify protocol with the standard library's
``socket`` (no dependency): READY=1 once the model and camera are up and the
first frame went through, WATCHDOG=1 while frames flow (at most every half of
``WatchdogSec``), STATUS= lines for ``systemctl status``, RELOADING=1 and
STOPPING=1.  Without ``$NOTIFY_SOCKET`` (a terminal, a test) it does nothing.

:class:`Signals` turns SIGTERM/SIGINT into a stop event (the loop ends after
the current frame) and SIGHUP into a reload request (handled between frames);
:func:`exit_now` then leaves without the slow native-library teardown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Mapping, NoReturn

log = logging.getLogger(__name__)


class SdNotifier:
    """sd_notify(3) over the AF_UNIX datagram socket systemd names in ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None, watchdog_usec: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.address = address
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late frame does not trip it.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec > 0 else None
        self._clock = clock
        self._last_watchdog: float | None = None
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # "@name" is an abstract socket: a leading NUL byte on the wire.
            self._target = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "SdNotifier":
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; never blocks or raises (the pipeline must not stall on it)."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._target)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", fields, exc)
            return False

    def ready(self) -> None:
        self.send("READY=1", "STATUS=running")

    def watchdog(self) -> None:
        if self.watchdog_interval is None:
            return
        now = self._clock()
        if self._last_watchdog is None or now - self._last_watchdog >= self.watchdog_interval:
            if self.send("WATCHDOG=1"):
                self._last_watchdog = now

    def status(self, text: str) -> None:
        self.send(f"STATUS={text.splitlines()[0] if text else ''}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to its reload request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config and the model")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def check_watchdog(self, no_frame_timeout: float) -> None:
        """A lost camera should end with our own message (exit 66), not with the watchdog's SIGABRT."""
        if self.watchdog_interval is not None and no_frame_timeout >= 2 * self.watchdog_interval:
            log.warning("run.no_frame_timeout (%.0f s) is not shorter than WatchdogSec (%.0f s): a lost camera "
                        "will be killed by the watchdog before the reconnects give up",
                        no_frame_timeout, 2 * self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Signals:
    """SIGTERM/SIGINT -> ``stop`` (a second one aborts at once); SIGHUP -> ``reload``.

    The handlers only set events: the main loop acts on them between frames,
    so a frame is never half processed and a CSV row never half written.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.received: str | None = None  # the name of the signal that asked to stop

    def install(self) -> "Signals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        # A file-size limit (ulimit -f, LimitFSIZE=): write() fails with EFBIG, which the CSV log
        # reports and holds rows for, instead of the default SIGXFSZ killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def _on_stop(self, signum: int, _frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # asked twice (Ctrl-C Ctrl-C): don't wait for a stuck camera
        self.received = signal.Signals(signum).name
        self.stop.set()

    def _on_reload(self, _signum: int, _frame) -> None:
        self.reload.set()


_signals: Signals | None = None


def signals() -> Signals:
    """The process's one :class:`Signals`, installed on first use: ``python -m device run`` calls this
    before anything else (device/__main__.py), so a SIGTERM in the first moments is a clean stop."""
    global _signals
    if _signals is None:
        _signals = Signals().install()
    return _signals


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, once the log is closed and every stream flushed.

    Tearing down MediaPipe's native modules alone takes 0.3-0.7 s on a PC (more on a Pi) and
    gains nothing here; skipping it keeps a stop well inside systemd's 2 s budget.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
