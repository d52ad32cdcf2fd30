"""A trainer started by the gateway must never outlive it."""
from __future__ import annotations

import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """With CARRYON_PARENT_PID set (the gateway sets it), arm Linux's parent-death signal, so a
    kill -9 of the gateway ends this process too; and exit at once if the parent is already gone
    (it died before the signal was armed)."""
    parent = os.environ.get("CARRYON_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the check below still catches a gateway already gone
    if os.getppid() != int(parent):
        os._exit(1)
