"""StepClock: wall and CPU time of the training step loop, with data wait and the first step kept apart."""
from __future__ import annotations

import time


class StepClock:
    """Wall time of the step loop, split into waiting for data (read + host-to-device) and the rest.

    The first step a process runs is kept apart: it carries one-off costs (allocator warm-up,
    torch.compile), which would otherwise hide the steady-state throughput of short runs.
    """

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.first_step_s = None
        self.steps = 0
        self.seconds = 0.0
        self.data_seconds = 0.0
        # CPU time is immune to other load on a shared host; the process's (all threads) vs the
        # loop thread's own tells step work from background threads (e.g. Ray's) apart
        self.cpu_seconds = self.thread_cpu_seconds = 0.0
        self._t0 = self._t1 = self._c0 = self._th0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self._th0 = time.thread_time()

    def data_ready(self) -> None:
        self._t1 = time.perf_counter()

    def stop(self) -> None:
        total = time.perf_counter() - self._t0
        if self.first_step_s is None:
            self.first_step_s = total
            return
        self.steps += 1
        self.seconds += total
        self.data_seconds += self._t1 - self._t0
        self.cpu_seconds += time.process_time() - self._c0
        self.thread_cpu_seconds += time.thread_time() - self._th0

    def summary(self) -> dict:
        s = self.seconds
        return {"timed_steps": self.steps, "step_seconds": s, "first_step_s": self.first_step_s,
                "cpu_seconds": self.cpu_seconds, "thread_cpu_seconds": self.thread_cpu_seconds,
                "tokens_per_s": self.steps * self.tokens_per_step / s if s > 0 else None,
                "tokens_per_cpu_s": (self.steps * self.tokens_per_step / self.cpu_seconds
                                     if self.cpu_seconds > 0 else None),
                "data_wait_share": self.data_seconds / s if s > 0 else None}
