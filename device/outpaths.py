"""Output paths checked at start, before the camera opens: an unwritable path is one line and exit 73.

Nothing is created here: a folder that does not exist yet is judged by its
nearest existing parent, and writability is probed with an unnamed temp file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from device.errors import OutputError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_dir(folder: str | os.PathLike, what: str) -> None:
    """``folder`` exists as a writable folder, or can be created as one."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{what} {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot write in {existing}: {exc.strerror or exc}") from None


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
        check_dir(path.parent, what)
