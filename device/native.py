"""Taming native libraries: their stderr chatter and mediapipe's optional TensorFlow import."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


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
