"""MLflow runs: one parent per sweep family (its name and recipe), so a grid that grows keeps the
parent its finished cells are compared in, and a changed recipe gets a parent of its own."""
from __future__ import annotations

import pytest

from cdray import config as C
from cdray.sweep.plan import family_key, sweep_key
from cdray.tracking.runs import FAMILY_TAG, SWEEP_TAG, Tracker


def _cfg(micro_cfg_dict, **grid):
    return C.from_dict(micro_cfg_dict | {"grid": {**micro_cfg_dict["grid"], **grid}})


@pytest.mark.parametrize("grown", [{"seed": [42, 7]}, {"q": [0.0, 0.3, 0.5]}, {"strategy": ["contrastive"]},
                                   {"fields": {"train.weight_decay": [0.1, 1.0]}}, {"k": [4, 8]}])
def test_a_grid_that_grows_or_shrinks_keeps_its_family(micro_cfg_dict, grown):
    before, after = C.from_dict(micro_cfg_dict), _cfg(micro_cfg_dict, **grown)
    assert sweep_key(before) != sweep_key(after)
    assert family_key(before) == family_key(after)


@pytest.mark.parametrize("changed", [{"train": {"lr": 1e-3}}, {"name": "another"}, {"tokenizer": {"vocab_size": 300}}])
def test_a_changed_recipe_or_name_is_a_family_of_its_own(micro_cfg_dict, changed):
    merged = {k: ({**micro_cfg_dict[k], **v} if isinstance(v, dict) else v) for k, v in changed.items()}
    assert family_key(C.from_dict(micro_cfg_dict)) != family_key(C.from_dict(micro_cfg_dict | merged))


def test_the_parent_run_is_found_by_family_and_a_pre_family_parent_by_its_key(tmp_path):
    tracker = Tracker(C.TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t"))
    first = tracker.parent_run("s", "fam", "key1", {"sweep": {"train": {"lr": 1}}})
    tracker.finish(first)
    assert tracker.parent_run("s", "fam", "key2", {"sweep": {"train": {"lr": 1}}}) == first
    run = tracker.client.get_run(first)
    assert run.data.tags[SWEEP_TAG] == "key2" and run.info.status == "RUNNING"
    assert tracker.find_parent("fam", "nothing") == tracker.find_parent("other", "key2") == first
    assert tracker.parent_run("s", "fam2", "key3", {}) != first

    # a parent made before families had a sweep key only: found by it, and given its family
    old = tracker.client.create_run(tracker.experiment_id, run_name="s",
                                    tags={SWEEP_TAG: "old", "cdray.kind": "sweep"}).info.run_id
    assert tracker.parent_run("s", "fam-old", "old", {}) == old
    assert tracker.client.get_run(old).data.tags[FAMILY_TAG] == "fam-old"
