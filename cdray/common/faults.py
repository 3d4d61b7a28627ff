"""Deliberate crash and hold points for fault-injection tests: a trigger file in an output dir kills
the process that reaches it, or holds it there while a test kills its node."""
from __future__ import annotations

import os
import signal
import time
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


PAUSE_PREFIX = ".pause-at"


def pause_path(out_dir: str | os.PathLike, where: str, at: int) -> Path:
    return Path(out_dir) / f"{PAUSE_PREFIX}-{where}-{at}"


def held_path(out_dir: str | os.PathLike, where: str, at: int) -> Path:
    """What a process held at (where, at) leaves beside the hold."""
    path = pause_path(out_dir, where, at)
    return path.with_name(path.name + ".held")


def hold(out_dir: str | os.PathLike, where: str, at: int) -> Path:
    """Make the next process that reaches (where, at) in out_dir wait there until released: a
    test kills its node while it waits (a node lost mid-stage, as a spot preemption loses it)."""
    path = pause_path(out_dir, where, at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def pause_point(out_dir: str | os.PathLike, where: str, at: int) -> None:
    """Wait here while a hold for (where, at) is armed in out_dir, after saying so in a
    `.held` file beside it (which a test waits for). One stat() when unarmed."""
    path = pause_path(out_dir, where, at)
    if path.exists():
        held_path(out_dir, where, at).write_text(str(os.getpid()))
        while path.exists():
            time.sleep(0.05)


HOLD_ENV = "CDRAY_HOLD_SECONDS"


def hold_seconds(stage: str) -> None:
    """Sleep the seconds $CDRAY_HOLD_SECONDS gives `stage` ("train=20,generate=10,evaluate=4"),
    keeping whatever this process holds: the schedule benchmark's stages of set lengths, so that a
    host's few cores do not blur the schedule (bench/schedule.py). Unset: nothing, one getenv."""
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    for part in spec.split(","):
        name, _, seconds = part.partition("=")
        if name.strip() == stage:
            time.sleep(float(seconds))
