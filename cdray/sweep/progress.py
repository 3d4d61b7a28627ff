"""Live progress of a sweep, read from the store while stages run elsewhere (Ray Train workers,
Tune trials): a training run's step, loss, tokens/s and ETA from its metrics.jsonl, and one line
as each cell starts and as its evaluation is committed."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Optional

from cdray.common import console
from cdray.dag.store import Store

POLL = 2.0  # seconds between two looks at the store


def _last_row(path: Path) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError, IndexError):
        return None


def _first_row(path: Path) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def training_line(run_dir: Path, steps: int, tokens_per_step: int) -> Optional[str]:
    """'step s/N (p%), loss L, T tok/s, ETA m:ss' of a training run writing run_dir, or None."""
    metrics = run_dir / "metrics.jsonl"
    last, first = _last_row(metrics), _first_row(metrics)
    if not last or not first:
        return None
    step, spent = last["step"], last["time"] - first["time"]
    rate = (step - first["step"]) / spent if spent > 0 else 0.0
    eta = (steps - step) / rate if rate > 0 else None
    text = (f"step {step}/{steps} ({100 * step / steps:.0f}%), loss {last['loss']:.3f}, "
            f"{rate * tokens_per_step:,.0f} tok/s")
    return text + (f", ETA {int(eta // 60)}:{int(eta % 60):02d}" if eta is not None else "")


class Watcher:
    """A thread that reports, every POLL seconds, the training runs and cells of a sweep."""

    def __init__(self, store: Store, steps: int, tokens_per_step: int):
        self.store, self.steps, self.tokens_per_step = store, steps, tokens_per_step
        self.runs: dict[str, tuple[str, str]] = {}  # label -> (stage, key) of a training run
        self.cells: list = []
        self._seen: set[str] = set()
        self._ticking = threading.Lock()  # the thread and a final tick() from the driver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdray-progress", daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def watch_run(self, label: str, node) -> None:
        self.runs[label] = (node.stage, node.key)

    def forget_run(self, label: str) -> None:
        self.runs.pop(label, None)

    def watch_cells(self, cells: list) -> None:
        self.cells = list(cells)

    def watch_cell(self, cell) -> None:
        """One more cell (a search's, as it is drawn)."""
        if all(c.id != cell.id for c in self.cells):
            self.cells = [*self.cells, cell]

    def _loop(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - progress is a courtesy; it never stops a sweep
                pass

    def tick(self) -> None:
        with self._ticking:
            self._tick()

    def _tick(self) -> None:
        for label, (stage, key) in list(self.runs.items()):
            if not self.store.is_done(stage, key):
                line = training_line(self.store.dir(stage, key), self.steps, self.tokens_per_step)
                if line:
                    console.progress(label, line)
        for cell in self.cells:
            self._cell(cell)

    def _cell(self, cell) -> None:
        train, ev = cell.train, cell.evaluate
        if cell.id not in self._seen and (self.store.dir(train.stage, train.key) / "metrics.jsonl").is_file():
            self._seen.add(cell.id)
            built = self.store.is_done(train.stage, train.key)  # the GOOD's own run, built upstream
            console.say(f"[cdray] cell {cell.id}: {'trained already (the GOOD, or an earlier run); evaluating' if built else 'training'}")
        if cell.id in self._seen and not self.store.is_done(train.stage, train.key):
            line = training_line(self.store.dir(train.stage, train.key), self.steps, self.tokens_per_step)
            if line:
                console.progress(f"cell {cell.id}", line)
        done = f"{cell.id} evaluated"
        if done not in self._seen and self.store.is_done(ev.stage, ev.key):
            self._seen.add(done)
            stats = self.store.manifest(ev.stage, ev.key)["stats"]
            console.say(f"[cdray] cell {cell.id}: perplexity {stats['final_ppl']:.2f} "
                        f"(best {stats['best_ppl']:.2f} at step {stats['best_step']})")


def log_path(store: Store, name: str) -> Path:
    """Where a run's library logs go: beside a local store (.cdray/logs/), or in a remote one's cache."""
    base = store.root / "_logs" if store.remote else store.root.parent / "logs"
    return base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
