"""End to end: a random search over a q range with ASHA, through Ray Tune and MLflow, then restored."""
from __future__ import annotations

import json

import mlflow
import pytest

from cdray import config as C
from cdray.dag.points import point_cell
from cdray.dag.store import Store

pytestmark = pytest.mark.slow


def test_a_random_search_with_asha_runs_end_to_end_and_restores(micro_cfg_dict, ray_session, tmp_path, capsys):
    from cdray.shell.driver import run_sweep

    d = micro_cfg_dict | {"grid": {"k": [4], "strategy": ["no_contrast"], "q": {"low": 0.0, "high": 0.6},
                                   "seed": [42]},
                          "ray": {"num_cpus": 2, "max_concurrent_cells": 1},
                          "search": {"algorithm": "random", "samples": 3, "seed": 7, "scheduler": "asha"}}
    cfg = C.from_dict(d)
    assert cfg.asha_grace == 4  # the first milestone at or past a quarter of the 12 steps
    lines: list[str] = []
    rows = run_sweep(cfg, echo=lines.append)
    store = Store.at(cfg.store.root)
    said = capsys.readouterr().out
    assert any(r["arm"] == "BASELINE" and r["seed"] == 42 for r in rows), rows  # run for the drawn cells

    client = mlflow.MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("cdray.kind") == "cell"]
    children = [r for r in runs if "search_point" in r.data.params]  # the drawn cells; beside them, their BASELINE
    assert len(children) == 3, [c.data.tags for c in runs]
    assert {r.data.tags["cdray.cell_id"] for r in runs if r not in children} <= {"BASELINE|q=0|seed=42"}
    finished = [c for c in children if c.info.status == "FINISHED"]
    stopped = [c for c in children if c.info.status == "KILLED"]
    assert len(finished) + len(stopped) == 3 and finished, "ASHA never stops the first cell to report"
    for child in children:
        point = json.loads(child.data.params["search_point"])
        assert set(point) == {"arm", "q", "seed"} and 0.0 <= point["q"] <= 0.6
        cell = point_cell(cfg, point)
        assert child.data.params["q"] == str(cell.q) and cell.q == round(cell.q, 3)
        if child.info.status == "FINISHED":
            assert store.is_done("evaluate", cell.evaluate.key)
            assert f"[cdray] cell {cell.id}: perplexity" in said  # progress lines follow drawn cells too
            assert any(r["q"] == cell.q and r["arm"] == cell.label for r in rows)
        else:  # stopped at a rung, never before the grace step, and said so
            step = int(child.data.tags["cdray.stopped_at_step"])
            assert child.data.tags["cdray.status"] == "stopped" and 4 <= step < 12
            assert not store.is_done("train", cell.train.key)
            assert any(line.startswith(f"stopped by ASHA at step {step}: {cell.label} q={cell.q:g}")
                       for line in lines), lines

    # run again: Tune's restore, nothing drawn anew, nothing built, the same cells and numbers
    manifests = {(s, k): store.manifest(s, k)["created"] for s, k in store.list()}
    again = run_sweep(cfg, echo=lambda line: None)
    assert {(s, k): store.manifest(s, k)["created"] for s, k in store.list()} == manifests
    assert sorted((r["arm"], r["q"], r["final_ppl"]) for r in again) == \
        sorted((r["arm"], r["q"], r["final_ppl"]) for r in rows)
    assert len([r for r in client.search_runs([exp.experiment_id], max_results=100)
                if r.data.tags.get("cdray.kind") == "cell"]) == len(runs)
