"""The sweep's build order respects every dependency, over many generated grids (with and without
the GOOD, SMALL and cell training runs sharing keys), and a stage never starts before its inputs."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdray import config as C
from cdray.dag.builders import MissingInputError, build
from cdray.dag.graph import build_graph
from cdray.dag.store import Store

STEPS = 12
MILESTONES = (4, 8, 12)
MICRO = {"preset": "micro", "context": 128}
SMALLER = {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "context": 128}


@st.composite
def sweeps(draw) -> dict:
    """A micro sweep dict with a random grid; some draws make runs of different roles coincide."""
    expert_seed = draw(st.sampled_from([42, 43]))
    seeds = draw(st.lists(st.sampled_from([41, 42, 43, 44]), min_size=1, max_size=3, unique=True))
    every = draw(st.sampled_from([4, STEPS]))
    # the GOOD keeps the cells' milestones (its key can then be a BASELINE's) or more
    good_milestones = draw(st.sampled_from([None, list(MILESTONES)]))
    kept = MILESTONES if good_milestones or every == 4 else (STEPS,)
    expert_step = draw(st.sampled_from(kept))
    k = draw(st.lists(st.sampled_from([m for m in kept if m < expert_step] or [None]), unique=True))
    k = [x for x in k if x is not None]
    r = draw(st.lists(st.sampled_from([2.0, 4.0]), unique=True, max_size=2))
    p = draw(st.lists(st.sampled_from([0.1, 0.5]), unique=True, max_size=2))
    strategy = draw(st.lists(st.sampled_from(C.STRATEGIES), min_size=1, max_size=3, unique=True))
    q = draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 1.0]), min_size=1, max_size=3, unique=True))
    if any(s in ("contrastive", "contrastive_tail") for s in strategy) and any(q) and not (k or r or p):
        p = [0.3]
    sweep = {
        "name": "prop",
        "tokenizer": {"vocab_size": 256},
        "train": {"steps": STEPS, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "checkpoint_every": every, "precision": "fp32"},
        "expert": {"model": MICRO, "seed": expert_seed, "step": expert_step, "milestones": good_milestones},
        "generation": {"prompt_tokens": 8, "max_new_tokens": 16},
        "eval": {"lm_eval_tasks": draw(st.sampled_from([[], ["blimp"]]))},
        "grid": {"k": k, "r": r, "p": p, "strategy": strategy, "q": q, "seed": seeds},
    }
    # SMALL candidates that include the mixed model's shape: a SMALL run can then be a BASELINE's
    if draw(st.booleans()):
        sweep["small"] = {"candidates": [SMALLER]}
        sweep["grid"]["r"] = r[:1]  # one candidate: two ratios would pick one shape (refused)
        if draw(st.booleans()):
            sweep["mixed_model"] = SMALLER
    return sweep


def _config(sweep: dict) -> C.SweepConfig:
    try:
        return C.from_dict(sweep)
    except C.ConfigError as e:  # the generator only draws valid grids
        pytest.fail(f"generated an invalid sweep: {e}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweeps())
def test_build_order_respects_every_dependency(sweep):
    cfg = _config(sweep)
    graph = build_graph(cfg)
    assert cfg.grid.cells() == len(graph.cells)  # what grid.max_cells is checked against
    ident = lambda n: (n.stage, n.key)  # noqa: E731
    upstream = graph.upstream()
    done: set = set()
    for node in upstream:  # built first, one after another, in this order
        missing = [d.label for _, d in node.inputs if ident(d) not in done]
        assert not missing, f"upstream {node.label} is built before {missing}"
        done.add(ident(node))
    covered = set(done)
    for cell in graph.cells:  # then the cells, concurrently: each sees upstream and its own work
        seen = set(done)
        for node in cell.nodes():
            missing = [d.label for _, d in node.inputs if ident(d) not in seen]
            assert not missing, f"{cell.id}: {node.label} is built before {missing}"
            seen.add(ident(node))
        covered |= seen
    assert covered == {ident(n) for n in graph.nodes()}


def test_the_goods_seed_in_the_grid_makes_its_baseline_shared_work(micro_cfg_dict):
    """The paper's design: GOOD = the seed-43 BASELINE run, so that cell's training is upstream."""
    cfg = C.from_dict(micro_cfg_dict | {"grid": micro_cfg_dict["grid"] | {"seed": [42, 43]}})
    graph = build_graph(cfg)
    baseline = next(c for c in graph.cells if c.arm == "BASELINE" and c.seed == 43)
    assert baseline.train.key == graph.good.key
    upstream = graph.upstream()
    assert graph.good in upstream
    assert max(upstream.index(g) for g in graph.generations.values()) > upstream.index(graph.good)
    # its evaluation stays the cell's own work
    assert baseline.evaluate not in upstream


def test_a_stage_with_an_unbuilt_input_names_it(micro_cfg_dict, tmp_path):
    cfg = C.from_dict(micro_cfg_dict)
    graph = build_graph(cfg)
    gen = graph.generations["CD-EARLY-4"]
    with pytest.raises(MissingInputError, match=rf"generate CD-EARLY-4: its input 'expert' "
                                                rf"\(train GOOD seed=43, train/{graph.good.key}\) is not built"):
        build(gen, cfg, Store.at(tmp_path / "store"))
    assert not (tmp_path / "store" / "generate").exists()  # nothing was started


@settings(max_examples=100, deadline=None)
@given(sweeps())
def test_the_plan_lists_every_node_once_in_build_order(sweep):
    graph = build_graph(_config(sweep))
    order = [(n.stage, n.key) for n in graph.build_order()]
    assert len(order) == len(set(order)) == len(graph.nodes())
    position = {ident: i for i, ident in enumerate(order)}
    # the prompts (whose count decides whether the budget is reachable) come before any training
    assert position[(graph.prompts.stage, graph.prompts.key)] < min(
        i for (stage, _), i in position.items() if stage == "train")
    for node in graph.nodes():
        for _, dep in node.inputs:
            assert position[(dep.stage, dep.key)] < position[(node.stage, node.key)]


def test_the_stage_table_names_every_builder():
    from cdray.dag.builders import BUILDERS
    from cdray.dag.stages import STAGES

    assert set(BUILDERS) == set(STAGES)
    with pytest.raises(ValueError, match="stage 'tokenizer' reads no input 'prompts'"):
        from cdray.dag.graph import Node

        Node("tokenizer", {}, (("prompts", Node("corpus", {}, (), "corpus")),), "tokenizer")
