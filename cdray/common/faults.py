"""Deliberate crash points for fault-injection tests: a trigger file in an output dir kills the process."""
from __future__ import annotations

import os
import signal
from pathlib import Path

TRIGGER_PREFIX = ".crash-at"


def trigger_path(out_dir: str | os.PathLike, where: str, at: int) -> Path:
    return Path(out_dir) / f"{TRIGGER_PREFIX}-{where}-{at}"


def arm(out_dir: str | os.PathLike, where: str, at: int, victim: int | None = None) -> Path:
    """Make the next process that reaches (where, at) in out_dir SIGKILL itself, or the process
    `victim` (e.g. the driver whose actor reached that point), once."""
    path = trigger_path(out_dir, where, at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if victim is None else str(victim))
    return path


def crash_point(out_dir: str | os.PathLike, where: str, at: int) -> None:
    """SIGKILL this process if a trigger for (where, at) is armed in out_dir.

    The trigger is consumed before dying, so the restarted process runs past this point: this is
    how the fault tests kill a Ray Train worker, a generation actor or a driver at an exact spot
    (a kill from outside would race with steps that take milliseconds). One stat() when unarmed.
    """
    path = trigger_path(out_dir, where, at)
    if path.exists():
        victim = path.read_text().strip()
        path.unlink()
        os.kill(int(victim) if victim else os.getpid(), signal.SIGKILL)
