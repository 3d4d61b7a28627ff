"""The sweep DAG: every sweeps/*.yaml loads and plans; keys cover every config field; dedup rules."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import shipped_data_root

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.sweep.plan import format_plan, plan

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_file_loads_and_plans(path, tmp_path):
    cfg = C.load(path, [f"store.root={tmp_path}"])
    if cfg.data_root is not None:  # the data the sweep reads there, as tiny fixtures
        cfg = C.load(path, [f"store.root={tmp_path}", f"data_root={shipped_data_root(tmp_path / 'data')}"])
    graph = build_graph(cfg)
    rows = plan(graph, Store.at(tmp_path))
    assert rows and not any(r.cached for r in rows)
    assert "to build" in format_plan(rows)
    assert len({c.id for c in graph.cells}) == len(graph.cells)


def test_paper_sweep_shape(tmp_path):
    cfg = C.load(SWEEPS[0].parent / "paper.yaml", [f"store.root={tmp_path}",
                                                   f"data_root={shipped_data_root(tmp_path / 'data')}"])
    g = build_graph(cfg)
    # 10 seeds x (BASELINE + NO-CONTRAST + NO-CONTRAST+VHEAD + 4 EARLY + 5 SMALL + 4 DROP)
    assert len(g.cells) == 10 * (3 + 4 + 5 + 4)
    assert len(g.generations) == 2 + 4 + 5 + 4
    assert {c.arm for c in g.cells if c.q == 0} == {"BASELINE"}
    # the q=0 cells of every arm are one BASELINE per seed
    assert sum(c.arm == "BASELINE" for c in g.cells) == 10
    assert all(info["non_embedding_ratio"] > 1 for info in g.small_info.values())
    # the paper's five SMALL configs, each its own run and corpus (Ulm et al. 2025, arXiv 2510.08245)
    assert sorted((i["layers"], i["hidden"]) for i in g.small_info.values()) == [
        (4, 192), (5, 224), (6, 256), (8, 384), (10, 512)]
    assert len({n.key for n in g.generations.values()}) == len(g.generations)
    assert len({c.train.key for c in g.cells}) == len(g.cells)


def test_shared_work_appears_once(micro_cfg_dict):
    cfg = C.from_dict(micro_cfg_dict | {"grid": micro_cfg_dict["grid"] | {"k": [4, 8], "q": [0, 0.3, 0.6], "seed": [1, 2]}})
    g = build_graph(cfg)
    stages = [n.stage for n in g.nodes()]
    assert stages.count("corpus") == 1 and stages.count("tokenizer") == 1
    assert stages.count("generate") == 3  # NO-CONTRAST, CD-EARLY-4, CD-EARLY-8
    trains = [n for n in g.nodes() if n.stage == "train"]
    # 1 GOOD + per seed: 1 BASELINE + 3 corpora x 2 non-zero q
    assert len(trains) == 1 + 2 * (1 + 3 * 2)
    assert len(g.cells) == 2 * (1 + 3 * 2)


def _perturb(value, tp):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != value)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        inner = args[0]
        if value is None:
            return {int: 3, float: 0.5, str: "x"}.get(inner, None)
        return _perturb(value, inner)
    if tp is bool:
        return not value
    if tp is int:
        return value + 1
    if tp is float:
        return value * 0.5 if value else 0.01
    if tp is str:
        return value + "x"
    return None


SKIP = {  # containers covered by dedicated cases below; plumbing never reaches a stage
    "corpus.sources", "small.candidates", "expert.milestones", "mixed_model", "expert.model.vocab_size",
    "tokenizer.vocab_size", "eval.babylm_dir",
    # BabyLM settings only reach babylm nodes, which need data: tests/test_babylm.py covers their keys
    "eval.tasks", "eval.lm_eval_tasks", "eval.max_items", "eval.steps", "eval.fetch_url", "eval.fetch_sha256",
    "eval.reading_mode",
}


def _leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if f.metadata.get("key") is False:
            continue  # execution-only: stays out of every key (test below)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], name + ".")
        else:
            yield name, hints[f.name]


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


@pytest.mark.parametrize("section", ["corpus", "tokenizer", "train", "expert", "generation", "eval"])
def test_keys_are_sensitive_to_every_field(section, micro_cfg_dict):
    base_cfg = C.from_dict(micro_cfg_dict)
    base_keys = {n.key for n in build_graph(base_cfg).nodes()}
    full = C.to_dict(base_cfg)
    cls = typing.get_type_hints(C.SweepConfig)[section]
    checked = 0
    for name, tp in _leaf_fields(cls, section + "."):
        if name in SKIP:
            continue
        new = _perturb(_get(full, name), tp)
        if new is None:
            continue
        try:
            cfg = C.from_dict(_with(full, name, new))
        except C.ConfigError:
            continue  # a perturbation the validator rejects says nothing about keys
        keys = {n.key for n in build_graph(cfg).nodes()}
        assert keys != base_keys, f"changing {name} left every store key unchanged"
        checked += 1
    assert checked >= 1


def _with(tree, dotted, value):
    import copy

    t = copy.deepcopy(tree)
    C.set_dotted(t, dotted, value)
    return t


def test_execution_only_fields_do_not_change_keys(micro_cfg_dict):
    base = {n.key for n in build_graph(C.from_dict(micro_cfg_dict)).nodes()}
    changed = _with(C.to_dict(C.from_dict(micro_cfg_dict)), "train.torch_threads", 2)
    changed = _with(changed, "generation.actors", 1)
    changed = _with(changed, "train.compile", True)
    assert {n.key for n in build_graph(C.from_dict(changed)).nodes()} == base


def test_keys_are_stable_across_loads(micro_cfg_dict):
    a = [n.key for n in build_graph(C.from_dict(micro_cfg_dict)).nodes()]
    b = [n.key for n in build_graph(C.from_dict(micro_cfg_dict)).nodes()]
    assert a == b


def test_decontamination_items_are_keyed_by_content_not_path(micro_cfg_dict, tmp_path):
    from cdray.dag.builders import eval_items_dir
    from cdray.dag.run_config import execution_of

    items = tmp_path / "items"
    (items / "blimp").mkdir(parents=True)
    (items / "blimp" / "a.jsonl").write_text('{"sentence_good": "The cat sat."}\n')
    (tmp_path / "link").symlink_to(items)

    def generate_keys(folder):
        cfg = C.from_dict(micro_cfg_dict | {"eval": {"babylm_dir": str(folder)},
                                            "generation": micro_cfg_dict["generation"] | {"drop_contaminated": True}})
        return cfg, {n.key for n in build_graph(cfg).generations.values()}

    cfg, keys = generate_keys(items)
    assert generate_keys(tmp_path / "link")[1] == keys  # the same items through a symlink
    node = next(iter(build_graph(cfg).generations.values()))
    assert eval_items_dir(node.config, execution_of(cfg)) == str(items)
    (items / "blimp" / "a.jsonl").write_text('{"sentence_good": "The dog sat."}\n')
    assert generate_keys(items)[1].isdisjoint(keys)  # other items, other corpora
    with pytest.raises(ValueError, match="eval.babylm_dir .* changed since the sweep was planned"):
        eval_items_dir(node.config, execution_of(cfg))


def test_evaluation_data_keys_only_what_reads_it(micro_cfg_dict):
    """Pointing a built sweep at BabyLM data adds evaluation work and rebuilds nothing: corpora
    that do not drop contaminated rows measure their overlap with the items in a stage of its own."""
    from cdray.eval.babylm import data_digest

    from conftest import BABYLM_SAMPLE as shared
    before = build_graph(C.from_dict(micro_cfg_dict))
    with_items = C.from_dict(micro_cfg_dict | {"eval": micro_cfg_dict["eval"] | {"babylm_dir": str(shared)}})
    after = build_graph(with_items)
    old = {(n.stage, n.key) for n in before.nodes()}
    new = [n for n in after.nodes() if (n.stage, n.key) not in old]
    assert new and {n.stage for n in new} == {"babylm", "contamination"}
    assert old <= {(n.stage, n.key) for n in after.nodes()}
    assert set(after.contamination) == set(after.generations)
    node = after.contamination["CD-EARLY-4"]
    assert node.input("generate") is after.generations["CD-EARLY-4"]
    assert node.config["eval_items"] != "missing" and data_digest(shared, "blimp")


@pytest.mark.parametrize("name", ["replicate.yaml", "replicate-gpu.yaml"])
def test_the_replication_keeps_the_papers_ratios(name, tmp_path):
    """k at 1/16 of training, the GOOD at 5/16, q = 0.3, >= 3 seeds, BASELINE + NO-CONTRAST +
    CD-EARLY (Ulm et al. 2025, arXiv 2510.08245)."""
    cfg = C.load(SWEEPS[0].parent / name, [f"store.root={tmp_path}",
                                           f"data_root={shipped_data_root(tmp_path / 'data')}"])
    steps = cfg.train.steps
    assert cfg.grid.k == (steps // 16,) and cfg.expert_step == 5 * steps // 16
    assert set(cfg.grid.q) == {0.0, 0.3} and len(cfg.grid.seed) >= 3
    assert not cfg.generation.stop_at_eos  # full-length rows, as the paper's loop: the budget is met
    arms = {c.arm for c in build_graph(cfg).cells}
    assert arms == {"BASELINE", "NO-CONTRAST", f"CD-EARLY-{steps // 16}"}
