"""Tests of cdray.decode.shared_batch: concurrent requests through one decode batch."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cdray.config import DecodingConfig
from cdray.decode.engine import Decoder
from cdray.decode.shared_batch import BatchClosed, SharedBatch
from tests.test_decoding import tiny_llama

torch.set_num_threads(1)
KW = dict(max_new_tokens=30, stop_at_eos=True, eos_id=19, max_len=36)


@pytest.fixture(scope="module")
def decoder():
    return Decoder(tiny_llama(0, sharpen=40.0), tiny_llama(1, sharpen=40.0), "contrastive",
                   DecodingConfig(alpha=0.1))


def _requests():
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(16)]
    return (prompts[:8], list(range(8))), (prompts[8:], list(range(8, 16)))


def test_a_request_arriving_mid_run_fills_the_slots_the_first_one_leaves(decoder):
    (p1, s1), (p2, s2) = _requests()
    alone = [decoder.generate(p, s, batch_size=4, **KW) for p, s in ((p1, s1), (p2, s2))]
    batch = SharedBatch(decoder, batch_size=4, **KW)
    got, second = {}, {}

    def start_second():  # from the first request's first row on: surely mid-run
        second["out"] = batch.generate(p2, s2)

    def on_row(i, res):
        if not got:
            threading.Thread(target=start_second).start()
            deadline = time.monotonic() + 30
            while not batch._waiting and time.monotonic() < deadline:
                time.sleep(0.001)  # hold the batch until the second request has queued
            assert batch._waiting
        got[i] = res

    t0 = time.perf_counter()
    rows1, usage1 = batch.generate(p1, s1, on_row=on_row)
    deadline = time.monotonic() + 60
    while "out" not in second and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    rows2, usage2 = second["out"]
    # the rows' shares of the batch's time add up to the time it ran, once (each request's
    # own span, from its call to its last row, would count the shared stretch twice)
    assert 0.5 * wall < sum(r.seconds for r in rows1 + rows2) <= wall
    # a row's tokens never depend on the rows it shares the batch with
    assert rows1 == alone[0] and rows2 == alone[1] and [got[i] for i in range(8)] == rows1
    shared = dict(batch.usage)
    assert shared["row_steps"] == sum(len(r.tokens) for r in rows1 + rows2)
    # one request after the other: each one's tail runs beside idle slots
    one_by_one = SharedBatch(decoder, batch_size=4, **KW)
    for p, s in ((p1, s1), (p2, s2)):
        one_by_one.generate(p, s)
    assert one_by_one.usage["row_steps"] == shared["row_steps"]
    assert shared["slot_steps"] < one_by_one.usage["slot_steps"]
    # each request's window counts every row of the batch while it ran
    assert usage1["row_steps"] >= sum(len(r.tokens) for r in rows1)
    assert usage2["slot_steps"] >= usage2["row_steps"] >= sum(len(r.tokens) for r in rows2)


def test_a_bad_request_fails_alone_and_an_engine_error_reaches_every_caller(decoder, monkeypatch):
    batch = SharedBatch(decoder, batch_size=4, **KW)
    with pytest.raises(ValueError, match="prompt 1 has 7 tokens; the batch takes 1 to 6"):
        batch.generate([[1, 2], [1] * 7], [0, 1])
    with pytest.raises(ValueError, match="2 prompts but 1 row seeds"):
        batch.generate([[1, 2], [1, 3]], [0])
    rows, usage = batch.generate([[1, 2]], [0])  # the batch still serves
    assert len(rows) == 1 and usage["row_steps"] == len(rows[0].tokens)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    deadline = time.monotonic() + 30
    while batch._serving and time.monotonic() < deadline:  # the last call's thread winds down
        time.sleep(0.001)
    monkeypatch.setattr(decoder, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        batch.generate([[1, 2]], [0])
    with pytest.raises(RuntimeError, match="failed earlier: CUDA error"):
        batch.generate([[1, 2]], [0])


def test_close_stops_rows_mid_run_and_refuses_new_requests(decoder):
    (p1, s1), _ = _requests()
    batch = SharedBatch(decoder, batch_size=4, **KW)
    closed = {}

    def on_row(i, res):  # on the serving thread, with rows of the request still decoding
        if not closed:
            closer = threading.Thread(target=lambda: closed.setdefault("ok", batch.close(30)))
            closer.start()
            deadline = time.monotonic() + 30
            while not batch._closed and time.monotonic() < deadline:
                time.sleep(0.001)
            closed["asked"] = True

    with pytest.raises(BatchClosed, match="closed while its rows were decoding"):
        batch.generate(p1, s1, on_row=on_row)
    deadline = time.monotonic() + 30
    while "ok" not in closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed["ok"] is True and not batch._thread.is_alive()
    with pytest.raises(BatchClosed, match="is closed"):
        batch.generate(p1, s1)


def test_an_exiting_interpreter_waits_for_the_serving_thread(tmp_path):
    # a serving thread still inside torch as the interpreter finalizes aborts the process (seen
    # on an H100: "terminate called without an active exception"); the exit hook joins it first
    script = tmp_path / "exit.py"
    script.write_text(
        "import atexit, threading\n"
        "atexit.register(lambda: print('serving threads at exit:', [t.name for t in"
        " threading.enumerate() if t.name == 'cdray-decode']))\n"  # runs after cdray's hook
        "from cdray.config import DecodingConfig\n"
        "from cdray.decode.engine import Decoder\n"
        "from cdray.decode.shared_batch import SharedBatch\n"
        "from tests.test_decoding import tiny_llama\n"
        "import time\n"
        "d = Decoder(tiny_llama(0), tiny_llama(1), 'contrastive', DecodingConfig(alpha=0.1))\n"
        "engine = d.generate\n"  # an engine whose tail outlasts the caller's wake-up, as on a GPU
        "d.generate = lambda *a, **k: (engine(*a, **k), time.sleep(1.0))[0]\n"
        "batch = SharedBatch(d, batch_size=2, max_new_tokens=8, stop_at_eos=False, max_len=12)\n"
        "rows, _ = batch.generate([[1, 2], [1, 3], [1, 4]], [0, 1, 2])\n"
        "print('rows', len(rows))\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows 3\nserving threads at exit: []" in done.stdout
