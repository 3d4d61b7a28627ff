"""What a user sees while a sweep runs: cdray's own lines, live progress, and nothing else.

While `quiet(log)` is active, everything written to the process's stdout and stderr (Ray's C++
and Python logs, Ray Data's and Tune's progress, MLflow's messages, warnings) goes to the log
file, and cdray's lines (`say`) and progress (`progress`) go to the terminal it started on. On a
terminal, progress is one line rewritten in place (rich); elsewhere, a plain line at most every
PLAIN_EVERY seconds per task.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

PLAIN_EVERY = 30.0  # seconds between two plain progress lines of one task (non-terminal output)

_out: Optional[TextIO] = None  # the terminal's stdout while quiet, else None (print as usual)
_live = None  # the rich status line on a terminal, and the rich console that draws it
_rich = None
_last: dict[str, float] = {}


def say(line: str) -> None:
    """One line of cdray's own output (always shown; above the live line on a terminal)."""
    if _rich is not None:
        _rich.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    stream = _out or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def progress(task: str, text: str, *, final: bool = False) -> None:
    """A progress update of `task` (a stage or a cell): on a terminal the one live line shows it;
    elsewhere a plain line, at most every PLAIN_EVERY seconds per task (`final`: always)."""
    stream = _out or sys.stdout
    if _live is not None and not final:
        _live.update(f"{task}: {text}")
        return
    now = time.monotonic()
    if final or now - _last.get(task, -PLAIN_EVERY) >= PLAIN_EVERY:
        _last[task] = now
        say(f"[cdray]   {task}: {text}")
    stream.flush()


@contextlib.contextmanager
def quiet(log: Path, verbose: bool = False) -> Iterator[None]:
    """Send the process's stdout and stderr to `log` (named in the first line shown) while the
    block runs, unless `verbose`; cdray's own lines still reach the terminal."""
    global _out, _live, _rich
    if verbose or _out is not None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    # the terminal is what sys.stdout writes to: file descriptor 1 itself, or a stream that is not
    # descriptor 1 (pytest's capture, a notebook), which the descriptor redirection would not reach
    on_fd1 = _fileno(sys.stdout) == 1
    terminal = (os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace") if on_fd1
                else sys.stdout)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    logged = open(log, "a", buffering=1, encoding="utf-8", errors="replace")
    status, rich_console = None, None
    try:
        terminal.write(f"[cdray] Ray, MLflow and library logs go to {log} (--verbose shows them here)\n")
        terminal.flush()
        if terminal.isatty():
            from rich.console import Console

            rich_console = Console(file=terminal)
            status = rich_console.status("", spinner="dots")
            status.start()
        os.dup2(target, 1)
        os.dup2(target, 2)
        sys.stdout = sys.stderr = logged  # Python-level writes, whatever sys.stdout was
        _out, _live, _rich = terminal, status, rich_console
        yield
    finally:
        logged.flush()
        if status is not None:
            status.stop()
        _out, _live, _rich = None, None, None
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, target):
            os.close(fd)
        logged.close()
        if on_fd1:
            terminal.close()
        else:
            terminal.flush()


def _fileno(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
