"""A search's space (grid.q or a grid.fields entry as a range, search.*): validated where written,
and each drawn point turned into the cell the grid would key for it."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdray import config as C
from cdray.config.search import RangeAxis
from cdray.dag.graph import build_graph
from cdray.dag.points import arm_choices, axes, point_cell
from cdray.sweep.plan import sweep_key

TINY = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"


def tiny(*overrides: str):
    return C.load(TINY, ["store.root=/nonexistent/cdray-store", *overrides])


SEARCH = ("search.algorithm=random", "search.samples=3")


def test_ranges_are_written_on_the_grids_axes_and_land_in_the_search():
    cfg = tiny("grid.q={low: 0.0, high: 0.5}", "grid.fields={train.weight_decay: {low: 0.01, high: 3.0, log: true}}",
               *SEARCH)
    assert cfg.grid.q == () and cfg.grid.fields == ()
    assert cfg.search.ranges == (RangeAxis("q", 0.0, 0.5), RangeAxis("train.weight_decay", 0.01, 3.0, True))
    assert C.from_dict(C.to_dict(cfg)) == cfg
    space = axes(cfg)
    assert list(space) == ["arm", "q", "seed", "train.weight_decay"]
    assert space["arm"] == list(arm_choices(cfg)) == ["CD-EARLY-50", "CD-EARLY-100", "NO-CONTRAST"]
    assert build_graph(cfg).cells == []  # a search's cells are drawn as it runs


@pytest.mark.parametrize("overrides, field, says", [
    (("grid.q={low: 0.0, high: 0.5}",), "grid.q", "needs search.algorithm: random or optuna"),
    (("grid.q={low: 0.6, high: 0.5}", *SEARCH), "grid.q", "must be below high"),
    (("grid.q={low: 0.0, high: 1.5}", *SEARCH), "grid.q.high", "outside"),
    (("grid.fields={train.weight_decay: {low: 0.0, high: 1.0, log: true}}", *SEARCH), "grid.fields.train.weight_decay.low",
     "log range needs low > 0"),
    (("grid.fields={train.weight_decay: {low: -1.0, high: 1.0}}", *SEARCH), "grid.fields.train.weight_decay.low",
     "must be >= 0"),
    (("grid.fields={train.compile: {low: 0, high: 1}}", *SEARCH), "grid.fields.train.compile", "execution knob"),
    (("grid.fields={store.root: {low: 0, high: 1}}", *SEARCH), "grid.fields.store.root", "not a field"),
    (("search.samples=0",), "search.samples", ">= 1"),
    (("search.mode=max",), "search.mode", "minimised"),
    (("search.scheduler=asha", "search.grace_steps=7"), "search.grace_steps", "not a milestone"),
    (("search.reduction_factor=1",), "search.reduction_factor", ">= 2"),
    (("search.algorithm=bayes",), "search.algorithm", "not one of"),
])
def test_a_bad_search_is_one_error_naming_its_field(overrides, field, says):
    with pytest.raises(C.ConfigError) as e:
        tiny(*overrides)
    assert e.value.field == field and says in str(e.value)


def test_the_grace_step_defaults_to_the_first_milestone_past_a_quarter_of_training():
    cfg = tiny("search.scheduler=asha")
    assert cfg.train.default_milestones() == (50, 100, 150) and cfg.asha_grace == 50
    assert tiny("search.scheduler=asha", "search.grace_steps=100").asha_grace == 100


def test_a_sweep_without_a_search_keeps_its_key():
    assert sweep_key(tiny()) == sweep_key(tiny("search.algorithm=grid"))
    assert sweep_key(tiny()) != sweep_key(tiny(*SEARCH))


@settings(max_examples=25, deadline=None)
@given(arm=st.sampled_from(["CD-EARLY-50", "CD-EARLY-100", "NO-CONTRAST"]), q=st.sampled_from([0.0, 0.3]),
       wd=st.sampled_from([0.1, 1.0]))
def test_a_drawn_point_is_the_grid_cell_of_the_same_values(arm, q, wd):
    """Keys, label and BASELINE: a point from the search is the cell the grid builds for it, so a
    search reuses a grid's runs and the other way round."""
    grid = build_graph(tiny("grid.fields={train.weight_decay: [0.1, 1.0]}"))
    searched = tiny("grid.fields={train.weight_decay: {low: 0.05, high: 2.0, log: true}}", *SEARCH)
    cell = point_cell(searched, {"arm": arm, "q": q, "seed": 42, "train.weight_decay": wd})
    (same,) = [c for c in grid.cells if c.train.key == cell.train.key]
    assert (cell.evaluate.key, cell.label, cell.id) == (same.evaluate.key, same.label, same.id)
    assert [n.key for n in cell.babylm] == [n.key for n in same.babylm]


def test_drawn_values_are_rounded_to_three_significant_digits():
    searched = tiny("grid.q={low: 0.0, high: 0.5}", *SEARCH)
    cell = point_cell(searched, {"arm": "NO-CONTRAST", "q": 0.123456, "seed": 42})
    assert cell.q == 0.123 and cell.label == "NO-CONTRAST"
    assert RangeAxis("x", 0.01, 3.0, True).rounded(0.0123456) == 0.0123
    assert RangeAxis("x", 0.01, 3.0, True).rounded(2.99999) == 3.0


def test_a_search_plans_what_every_draw_shares():
    graph = build_graph(tiny("grid.q={low: 0.0, high: 0.5}", *SEARCH))
    assert {n.stage for n in graph.upstream()} == {"corpus", "tokenizer", "tokens", "prompts", "train"}
    assert [n.label for n in graph.upstream() if n.stage == "train"] == ["train GOOD seed=43"]
