"""SIGTERM as Ctrl-C: a `kill` stops cdray through the same path, which shuts Ray down."""
from __future__ import annotations

import signal
import threading


def sigterm_interrupts():
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the handler it replaced
    (None off the main thread, where handlers cannot be set). Ray installs its own on start-up,
    which aborts the process and leaves a local cluster running: set this again after ray.init."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
