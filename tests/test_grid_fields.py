"""Any config field as an axis of the grid (grid.fields): validated like --set, applied to what the
cells build, carried by the arms, and compared with the BASELINE that shares the arm's values."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.dag.nodes import baselines
from cdray.eval.arm_table import aggregate

TINY = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"


def tiny(*overrides: str):
    return C.load(TINY, ["store.root=/nonexistent/cdray-store", *overrides])


def by_stage(graph, stage: str) -> dict[str, str]:
    return {n.label: n.key for n in graph.build_order() if n.stage == stage}


def test_a_train_axis_doubles_the_student_runs_and_keeps_the_good_and_the_corpora():
    plain = build_graph(tiny())
    wd = build_graph(tiny("grid.fields={train.weight_decay: [0.1, 1.0]}"))
    assert len(wd.cells) == 2 * len(plain.cells)
    students = [label for label in by_stage(wd, "train") if "GOOD" not in label]
    assert len(students) == 2 * len([label for label in by_stage(plain, "train") if "GOOD" not in label])
    assert wd.good.key == plain.good.key
    assert sorted(n.key for n in wd.generations.values()) == sorted(n.key for n in plain.generations.values())
    # weight decay 0.1 is the sweep's own: those cells are the plain sweep's, artifacts and all
    own = {c.train.key for c in wd.cells if dict(c.fields)["train.weight_decay"] == 0.1}
    assert own == {c.train.key for c in plain.cells}
    assert {c.setting for c in wd.cells} == {"weight_decay=0.1", "weight_decay=1.0"}
    assert all("weight_decay=" in label for label in students)


def test_a_generation_axis_makes_a_corpus_per_value_and_one_baseline():
    g = build_graph(tiny("grid.fields={generation.decoding.top_k: [null, 50]}"))
    assert [c.label for c in g.cells if c.arm == "BASELINE"] == ["BASELINE"]
    assert len(g.generations) == 2 * len(build_graph(tiny()).generations)
    assert {c.setting for c in g.cells if c.arm != "BASELINE"} == {"top_k=None", "top_k=50"}
    assert set(baselines(g.cells).values()) == {"BASELINE"}


def test_an_expert_axis_makes_a_good_per_value():
    g = build_graph(tiny("grid.fields={expert.seed: [43, 44]}"))
    goods = {n.key for n in g.build_order() if n.stage == "train" and "GOOD" in n.label}
    assert len(goods) == 2 and {g.good.key, *(n.key for n in g.goods)} == goods
    # the BASELINE reads no GOOD: one BASELINE
    assert [c.label for c in g.cells if c.arm == "BASELINE"] == ["BASELINE"]


def test_each_arm_is_compared_with_the_baseline_sharing_its_values():
    g = build_graph(tiny("grid.fields={train.weight_decay: [0.1, 1.0], generation.decoding.top_k: [null, 50]}"))
    base = baselines(g.cells)
    for cell in g.cells:
        wd = dict(cell.fields)["train.weight_decay"]
        assert base[cell.label] == f"BASELINE weight_decay={wd}"
    rows = [{"arm": "BASELINE wd=1", "q": 0, "final_ppl": 100.0, "baseline": "BASELINE wd=1"},
            {"arm": "BASELINE wd=2", "q": 0, "final_ppl": 200.0, "baseline": "BASELINE wd=2"},
            {"arm": "CD wd=1", "q": 0.3, "final_ppl": 90.0, "baseline": "BASELINE wd=1"},
            {"arm": "CD wd=2", "q": 0.3, "final_ppl": 190.0, "baseline": "BASELINE wd=2"}]
    rel = {a["arm"]: a["rel_pct"] for a in aggregate(rows)}
    assert rel == {"BASELINE wd=1": None, "BASELINE wd=2": None, "CD wd=1": pytest.approx(10.0),
                   "CD wd=2": pytest.approx(5.0)}


@pytest.mark.parametrize("axis, field, says", [
    ("{train.torch_threads: [1, 2]}", "grid.fields.train.torch_threads", "execution knob"),
    ("{store.root: [a]}", "grid.fields.store.root", "not a field of what a sweep computes"),
    ("{train.nope: [1]}", "grid.fields.train.nope", "no field 'train.nope'"),
    ("{train: [1]}", "grid.fields.train", "is a section"),
    ("{train.weight_decay: [0.1]}", "grid.fields.train.weight_decay", "changes nothing"),
    ("{train.lr: [0.001, -1]}", "grid.fields.train.lr[1]", "is outside"),
    ("{train.lr: [0.001, 0.001]}", "grid.fields.train.lr[1]", "there twice"),
])
def test_a_bad_axis_is_one_line_naming_it(axis, field, says, capsys):
    from cdray.cli import main

    assert main(["plan", str(TINY), "--set", "store.root=/nonexistent/s", "--set", f"grid.fields={axis}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cdray: error: config field '{field}'") and says in err[0], err


def test_the_sweep_file_form_and_the_plan(tmp_path, capsys):
    from cdray.cli import main

    import yaml

    raw = yaml.safe_load(TINY.read_text())
    raw["grid"]["fields"] = {"train.weight_decay": [0.1, 1.0]}  # as a sweep file writes it
    sweep = tmp_path / "wd.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(sweep), "--set", f"store.root={tmp_path / 's'}"]) == 0
    out = capsys.readouterr().out
    assert "cells: 8" in out and "BASELINE|q=0|seed=42|weight_decay=1.0" in out
    assert "train BASELINE q=0 seed=42 weight_decay=1.0" in out


@pytest.mark.slow
def test_a_micro_sweep_over_weight_decay_runs_end_to_end(micro_cfg_dict, ray_session, tmp_path):
    from cdray.shell.driver import run_sweep
    from cdray.tracking.runs import Tracker

    d = micro_cfg_dict | {"grid": {"k": [], "strategy": ["no_contrast"], "q": [0.0, 0.5], "seed": [42],
                                   "fields": {"train.weight_decay": [0.1, 1.0]}}}
    cfg = C.from_dict(d)
    lines: list[str] = []
    rows = run_sweep(cfg, use_tune=False, echo=lines.append)
    assert {r["arm"] for r in rows} == {"BASELINE weight_decay=0.1", "BASELINE weight_decay=1.0",
                                        "NO-CONTRAST weight_decay=0.1", "NO-CONTRAST weight_decay=1.0"}
    table = next(line for line in lines if line.startswith("arm "))
    assert table and any("NO-CONTRAST weight_decay=1.0" in line for line in lines)
    ppl = {r["arm"]: r["final_ppl"] for r in rows}
    agg = {a["arm"]: a["rel_pct"] for a in aggregate(rows)}
    for wd in ("0.1", "1.0"):  # each against its own BASELINE
        base = ppl[f"BASELINE weight_decay={wd}"]
        assert agg[f"NO-CONTRAST weight_decay={wd}"] == pytest.approx(100 * (base - ppl[f"NO-CONTRAST weight_decay={wd}"]) / base)
    tracker = Tracker(cfg.tracking)
    from cdray.sweep.plan import family_key, sweep_key

    children = tracker.children(tracker.find_parent(family_key(cfg), sweep_key(cfg)))
    params = [c.data.params for c in children]
    assert sorted(p["train.weight_decay"] for p in params) == ["0.1", "0.1", "1.0", "1.0"]
    assert all(p["weight_decay"] == p["train.weight_decay"] for p in params)  # the recipe it trained by
    assert {p["baseline"] for p in params} == {"BASELINE weight_decay=0.1", "BASELINE weight_decay=1.0"}


@pytest.mark.slow
def test_min_p_and_typical_sampling_are_arms_of_a_micro_sweep(micro_cfg_dict, ray_session, tmp_path):
    """Two truncation rules added as modules of cdray.decode.truncation, set by an axis over the
    decoding section: a corpus each, arms named by their values, the rule in the corpus's key."""
    from cdray.dag.store import Store
    from cdray.shell.driver import run_sweep

    d = micro_cfg_dict | {"grid": {"k": [], "strategy": ["no_contrast"], "q": [0.0, 0.5], "seed": [42],
                                   "fields": {"generation.decoding": [{"min_p": 0.1}, {"typical_p": 0.9}]}}}
    cfg = C.from_dict(d)
    graph = build_graph(cfg)
    rows = run_sweep(cfg, use_tune=False, echo=lambda line: None)
    assert {r["arm"] for r in rows} == {"BASELINE", "NO-CONTRAST min_p=0.1", "NO-CONTRAST typical_p=0.9"}
    store = Store.at(cfg.store.root)
    decodings = [store.manifest("generate", n.key)["config"]["generation"]["decoding"]
                 for n in graph.generations.values()]
    assert {(dec.get("min_p"), dec.get("typical_p")) for dec in decodings} == {(None, 0.9), (0.1, None)}
