"""`python -m carryon_train.torchrun ARGS` (console script `carryon-torchrun`) is `torchrun ARGS`,
made to work on torch 1.13 under Python ≥ 3.11, which is Debian 12's pair.

There, torchrun fails before starting any worker with "AttributeError: 'NoneType' object has no
attribute 'get'" (reported in meta-llama/llama#86): torch 1.13's `Std.from_str` finds the member
for "0" by iterating the IntFlag `Std`, and since Python 3.11 iterating a flag enum yields only
its single-bit members, so NONE (0) and ALL (3) are never found and --redirects' default "0"
becomes None. torch 2.0 no longer iterates. This module replaces `from_str` with a lookup by value
when, and only when, the installed torch shows the bug, then runs torch's own launcher unchanged.
With torch ≥ 2.0 plain `torchrun` is the same thing.
"""
from __future__ import annotations

import re
import sys
from typing import List, Optional


def patch_std_from_str() -> bool:
    """Fixes Std.from_str in place if this torch has the bug; returns whether it did."""
    from torch.distributed.elastic.multiprocessing import api

    std = api.Std
    if std.from_str("0") is not None:
        return False

    def from_str(cls, vm: str):
        if re.match(r"^[0123]$", vm):
            return cls(int(vm))
        if re.match(r"^(\d:[0123],)*(\d:[0123])$", vm):
            return {int(i): cls(int(v)) for i, v in (m.split(":") for m in vm.split(","))}
        raise ValueError(f"{vm} does not match: <^[0123]$> or <^(\\d:[0123],)*(\\d:[0123])$>")

    std.from_str = classmethod(from_str)
    return True


def main(argv: Optional[List[str]] = None) -> None:
    patch_std_from_str()
    from torch.distributed.run import main as torchrun_main

    torchrun_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
