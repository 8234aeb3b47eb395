"""The project's own exceptions; the CLIs turn each into one line and an exit code."""


class DeviceError(Exception):
    """Base class: a failure the user can act on, reported without a traceback."""

    exit_code = 1


class ConfigError(DeviceError):
    exit_code = 78  # EX_CONFIG, so systemd does not restart a broken config forever


class ModelError(DeviceError):
    exit_code = 78


class SourceError(DeviceError):
    exit_code = 66  # EX_NOINPUT


class NoCameraError(DeviceError):
    """No camera device exists at all: nothing to wait for.  Not a SourceError, which a live source retries
    for ``no_frame_timeout`` (a camera that is there but fails, or is being plugged in)."""

    exit_code = 66


class OutputError(DeviceError):
    exit_code = 73  # EX_CANTCREAT: an output path that cannot be written (checked at start)


class WriteError(DeviceError):
    exit_code = 74  # EX_IOERR: rows or outputs that could not be written
