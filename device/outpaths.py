"""Output paths checked at start, before the camera opens: an unwritable path is one line and exit 73.

Nothing is created here: a folder that does not exist yet is judged by its
nearest existing parent, and writability is probed with an unnamed temp file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from device.errors import OutputError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _why_not(exc: OSError) -> str:
    """Why no file can be created in a folder that exists."""
    if exc.errno == errno.ENOENT:  # what /proc answers: "No such file or directory", about a folder that exists
        return "the folder exists but takes no new files (a virtual filesystem such as /proc)"
    return exc.strerror or str(exc)  # Read-only file system, Permission denied, ...


def check_dir(folder: str | os.PathLike, what: str, target: str | os.PathLike | None = None) -> None:
    """``folder`` exists as a writable folder, or can be created as one; errors name ``target`` (default:
    the folder)."""
    folder = Path(folder)
    named = folder if target is None else target
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{what} {named}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {named}: cannot create files in {existing}: {_why_not(exc)}") from None


def check_file(path: str | os.PathLike, what: str) -> None:
    """``path`` can be appended to, or created."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder, not a file")
    if path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except OSError as exc:
            raise OutputError(f"{what} {path}: cannot write: {exc.strerror or exc}") from None
    else:
        check_dir(path.parent, what, path)
