"""A Tune run's trials sorted by their last report: only ASHA stops a cell, and only from its grace
step; an unfinished cell otherwise means the run was interrupted."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.shell.search import sort_trials

TINY = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"


def _cfg(*overrides: str):
    return C.load(TINY, ["store.root=/nonexistent/cdray-store", *overrides])


def test_a_grid_interrupted_by_ctrl_c_reports_no_cell_as_stopped():
    cfg = _cfg()
    done, running = build_graph(cfg).cells[:2]
    with pytest.raises(KeyboardInterrupt):  # Tune returned from Ctrl-C with a trial unfinished
        sort_trials(cfg, [(done, {"done": True, "step": cfg.train.steps}), (running, {})])
    assert sort_trials(cfg, [(done, {"done": True})]).finished == [done]


def test_asha_stops_a_cell_only_from_its_grace_step():
    cfg = _cfg("search.scheduler=asha")
    done, stopped, early = build_graph(cfg).cells[:3]
    grace = cfg.asha_grace
    outcome = sort_trials(cfg, [(done, {"done": True}), (stopped, {"step": grace, "best_ppl": 9.5})])
    assert outcome.finished == [done] and outcome.stopped == [(stopped, grace, 9.5)]
    with pytest.raises(KeyboardInterrupt):  # no rung before the grace step: interrupted, not stopped
        sort_trials(cfg, [(early, {"step": grace - 1})])
