"""A progress bar: tqdm when it is installed, else a plain one that prints a line now and then."""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional


class _Plain:
    def __init__(self, total: int, initial: int, desc: str, every_s: float = 5.0) -> None:
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.start = self.last = time.time()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.every_s or self.n >= self.total:
            self.last = now
            rate = (self.n) / max(now - self.start, 1e-9)
            print(f"{self.desc} {self.n}/{self.total} ({rate:.1f} it/s) {self.postfix}", file=sys.stderr, flush=True)

    def set_postfix(self, values: Dict[str, object]) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


class _Silent(_Plain):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    if not enabled:
        return _Silent(total, initial, desc)
    try:
        from tqdm import tqdm  # type: ignore

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        return _Plain(total, initial, desc)


def fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"
