"""Child processes seen through /proc (Linux): what the tensor-parallel tests check for orphans."""

from __future__ import annotations

import time
from pathlib import Path


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of `pid`."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(child) for child in task.read_text().split()}
    live = set()
    for child in found:
        try:
            if "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
                live.add(child)
        except FileNotFoundError:          # it ended meanwhile
            pass
    return live


def gone(pids: set[int], timeout: float = 30.0) -> bool:
    """Whether every process of `pids` has left /proc within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.05)
    return False
