"""Atomic file writes (temp file in the same folder, fsync, rename): a reader, or a run resumed
after a crash, sees the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
from typing import BinaryIO, Callable


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"  # per process: two writers never share a temp file
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str, value: object) -> None:
    atomic_write_text(path, json.dumps(value, indent=2))
