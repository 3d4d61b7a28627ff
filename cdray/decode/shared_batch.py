"""One decode batch shared by concurrent generate requests: rows of a request that arrives while
another runs take the slots the first one frees, so a shard's tail does not drain the batch."""
from __future__ import annotations

import atexit
import itertools
import threading
import weakref
from collections import deque
from typing import Callable, Optional

from cdray.common.special_tokens import EOS_ID, PAD_ID
from cdray.decode.engine import Decoder, RowResult

EXIT_WAIT_S = 10.0  # how long an exiting interpreter waits for each serving thread to end
_open_batches: "weakref.WeakSet[SharedBatch]" = weakref.WeakSet()
_exit_hook: list[bool] = []  # registered with the first batch, not at import


def _close_at_exit() -> None:
    # a serving thread still inside torch when the interpreter finalizes (even in the engine's
    # last few calls after its final row was handed back) is killed there: "terminate called
    # without an active exception" and SIGABRT. atexit runs before that.
    for batch in list(_open_batches):
        batch.close(EXIT_WAIT_S)


class BatchClosed(RuntimeError):
    """The SharedBatch was closed while rows of this request were still decoding."""


class _Request:
    """The rows of one caller, filled in by the serving thread as they end."""

    def __init__(self, prompts: list[list[int]], seeds: list[int],
                 on_row: Optional[Callable[[int, RowResult], None]]):
        self.prompts, self.seeds, self.on_row = prompts, seeds, on_row
        self.results: list[Optional[RowResult]] = [None] * len(prompts)
        self.left = len(prompts)
        self.usage_start: Optional[dict] = None  # the batch's usage when its first row went in
        self.usage: dict = {}
        self.error: Optional[BaseException] = None
        self.done = threading.Event()

    def enter(self, usage: dict) -> None:
        """Rows of this request go to the engine: its usage window opens with the first."""
        if self.usage_start is None:
            self.usage_start = dict(usage)

    def add(self, i: int, res: RowResult, usage: dict) -> None:
        self.results[i] = res
        if self.on_row is not None:
            self.on_row(i, res)
        self.left -= 1
        if self.left == 0:
            self.usage = {k: usage[k] - self.usage_start.get(k, 0) for k in usage}
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class SharedBatch:
    """Serves `generate` calls from several threads with one Decoder and one batch.

    A serving thread runs Decoder.generate over the rows of every request waiting when it
    starts, and takes in the rows of requests that arrive later whenever its queue runs dry, in
    arrival order. It ends when no rows are waiting or running (a later request starts a new
    one), so an idle SharedBatch holds no thread. A row's tokens depend only on its prompt, seed,
    the models and the config (Decoder), never on the rows it shares the batch with.
    """

    def __init__(self, decoder: Decoder, *, max_new_tokens: int, stop_at_eos: bool,
                 batch_size: int, max_len: int, refill: bool = True, eos_id: int = EOS_ID,
                 pad_id: int = PAD_ID):
        self.decoder = decoder
        self.kwargs = dict(max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                           batch_size=batch_size, max_len=max_len, refill=refill, eos_id=eos_id,
                           pad_id=pad_id)
        self.usage = {"slot_steps": 0, "row_steps": 0}  # since this object was made
        self._lock = threading.Lock()
        self._waiting: deque[tuple[_Request, int]] = deque()
        self._serving = False
        self._error: Optional[BaseException] = None
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        _open_batches.add(self)
        if not _exit_hook:
            _exit_hook.append(True)
            atexit.register(_close_at_exit)

    def generate(self, prompts: list[list[int]], seeds: list[int],
                 on_row: Optional[Callable[[int, RowResult], None]] = None,
                 ) -> tuple[list[RowResult], dict]:
        """One continuation per prompt (blocking until all have ended), and the batch's usage
        ("slot_steps", "row_steps", as Decoder.generate counts them) from the engine taking the
        first of them to the last ending: the steps of every row in the batch then, this
        request's and others'. on_row(i, row) runs on the serving thread as row i ends."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} row seeds")
        if not prompts:
            return [], {k: 0 for k in self.usage}
        room = self.kwargs["max_len"] - self.kwargs["max_new_tokens"]
        for i, p in enumerate(prompts):  # here, so a bad request fails only its own caller
            if not 0 < len(p) <= room:
                raise ValueError(f"prompt {i} has {len(p)} tokens; the batch takes 1 to {room}")
        with self._lock:
            if self._closed:
                raise BatchClosed("the decode batch is closed")
            if self._error is not None:
                raise RuntimeError(f"the decode batch failed earlier: {self._error}") from self._error
            req = _Request(prompts, seeds, on_row)
            self._waiting.extend((req, i) for i in range(len(prompts)))
            if not self._serving:
                self._serving = True
                self._thread = threading.Thread(target=self._serve, name="cdray-decode",
                                                daemon=True)
                self._thread.start()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.results, req.usage  # type: ignore[return-value]

    def close(self, timeout: Optional[float] = None) -> bool:
        """Take no more requests and wait up to `timeout` s for the serving thread to end (True
        when it has). Rows still decoding stop as the next row ends; their callers get
        BatchClosed."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise BatchClosed("the decode batch was closed while its rows were decoding")

    def _take_waiting(self) -> list[tuple[_Request, int]]:
        with self._lock:
            items = list(self._waiting)
            self._waiting.clear()
            if not items:
                # decided under the lock: a request queued after this starts a new thread
                self._serving = False
            return items

    def _serve(self) -> None:
        running: dict[int, tuple[_Request, int]] = {}  # engine row number -> (request, index)
        try:
            while items := self._take_waiting():
                numbers = itertools.count()  # as Decoder.generate numbers this call's rows

                def rows(new: list[tuple[_Request, int]]) -> list[tuple[list[int], int]]:
                    out = []
                    for req, i in new:
                        running[next(numbers)] = (req, i)
                        out.append((req.prompts[i], req.seeds[i]))
                        req.enter(self.usage)
                    return out

                def more() -> list[tuple[list[int], int]]:
                    self._check_open()
                    with self._lock:
                        new = list(self._waiting)
                        self._waiting.clear()
                    return rows(new)

                def on_row(r: int, res: RowResult) -> None:
                    req, i = running.pop(r)
                    req.add(i, res, self.usage)
                    if running:
                        self._check_open()

                first = rows(items)
                self.decoder.generate([p for p, _ in first], [s for _, s in first], more=more,
                                      on_row=on_row, usage=self.usage, **self.kwargs)
        except BaseException as e:  # every caller waiting on this batch gets the error
            with self._lock:
                self._error = e
                self._serving = False
                failed = [req for req, _ in running.values()] + [req for req, _ in self._waiting]
                self._waiting.clear()
            for req in failed:
                req.fail(e)
