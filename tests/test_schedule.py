"""The schedule `cdray plan` states: a list schedule of the DAG on N slots, bounded below by the
critical path and the work per slot, never slower than the serial upstream it replaced."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.sweep.schedule import Job, critical_path, jobs, simulate


@st.composite
def dags(draw):
    """Shared stages (a chain-ish upstream) and cells (train -> evaluate chains reading them)."""
    n_up = draw(st.integers(1, 6))
    out = []
    for i in range(n_up):
        inputs = tuple(out[d].ident for d in draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else ()
        out.append(Job(("up", str(i)), draw(st.floats(1, 50)), draw(st.integers(0, 2)), inputs, None))
    for c in range(draw(st.integers(0, 6))):
        dep = out[draw(st.integers(0, n_up - 1))].ident
        train = Job(("train", f"c{c}"), draw(st.floats(1, 100)), 1, (dep,), c)
        out += [train, Job(("evaluate", f"c{c}"), draw(st.floats(1, 10)), 1, (train.ident,), c)]
    return out


@settings(max_examples=300, deadline=None)
@given(todo=dags(), slots=st.integers(2, 8), cells=st.integers(1, 8))
def test_the_makespan_is_bounded_and_no_worse_than_the_serial_upstream(todo, slots, cells):
    ready = simulate(todo, slots, cells)
    work = sum(j.seconds * j.slots for j in todo)
    assert ready >= max(critical_path(todo), work / slots) - 1e-6
    assert ready <= sum(j.seconds for j in todo) + 1e-6  # one at a time is the worst a list schedule does
    serial = simulate(todo, slots, cells, serial_upstream=True)
    assert serial >= sum(j.seconds for j in todo if j.cell is None) - 1e-6


def test_a_cell_that_reads_no_shared_output_runs_beside_the_upstream():
    good = Job(("train", "good"), 100, 1, (), None)
    corpus = Job(("generate", "c"), 50, 1, (good.ident,), None)
    baseline = Job(("train", "b"), 200, 1, (), 0)
    mixed = Job(("train", "m"), 100, 1, (corpus.ident,), 1)
    todo = [good, corpus, baseline, mixed]
    assert simulate(todo, 2, 2) == 250  # the BASELINE beside the GOOD; the mixed run after the corpus
    assert simulate(todo, 2, 2, serial_upstream=True) == 350  # GOOD, corpus, then both cells
    assert simulate(todo, 1, 2) == 450


def test_the_plan_of_a_tiny_sweep_schedules_every_stage(tmp_path):
    cfg = C.load(Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml", [f"store.root={tmp_path}"])
    graph = build_graph(cfg)
    todo = jobs(graph, cfg, Store.at(cfg.store.root), 2)
    assert len(todo) == len(graph.build_order())
    assert {j.ident for j in todo} == {(n.stage, n.key) for n in graph.build_order()}
    assert simulate(todo, 16, 16) <= simulate(todo, 2, 2)


def test_the_schedules_work_is_the_estimates_on_a_sweep_with_the_babylm_suite(tmp_path):
    """A checkpoint's BabyLM tasks run in one Ray task with one start-up: the schedule spreads that
    start-up over the checkpoint's stages instead of charging it to each (which once made `cdray
    plan` of sweeps/replicate.yaml say 2.5 h beside its own 83-minute estimate; it took 66 minutes)."""
    from cdray.sweep.estimate import STAGE_SECONDS, reckon

    cfg = C.load(Path(__file__).resolve().parent.parent / "sweeps" / "replicate.yaml", [f"store.root={tmp_path}"])
    graph, store = build_graph(cfg), Store.at(cfg.store.root)
    todo = jobs(graph, cfg, store, 2)
    r = reckon(graph, cfg, store, graph.build_order())
    assert r["kinds"]["babylm"] > 400 and r["checkpoints"] == r["kinds"]["babylm"] / len(cfg.eval.tasks)
    babylm = sum(j.seconds for j in todo if j.ident[0] == "babylm")
    assert abs(babylm - (r["babylm"] + STAGE_SECONDS * r["checkpoints"])) < 1e-6 * babylm
    work = sum(j.seconds * j.slots for j in todo) / 2
    assert 0.9 * r["total"] < work < 1.1 * r["total"]
