"""Paper statistics against hand-computed values on small synthetic prediction files."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cdray.eval import babylm, stats
from cdray.eval.stats import Checkpoint


def cp(arm, seed, step, **scores):
    return Checkpoint(arm, 0.0 if arm == "BASELINE" else 0.3, seed, step, scores)


def test_select_best_and_final():
    cps = [cp("A", 1, 1, blimp=50.0, ppl=30.0), cp("A", 1, 2, blimp=70.0, ppl=20.0),
           cp("A", 1, 3, blimp=60.0, ppl=25.0)]
    best = stats.select(cps, "best")[("A", 0.3, 1)]
    assert best["blimp"].step == 2 and best["ppl"].step == 2  # ppl: lower is better
    final = stats.select(cps, "final")[("A", 0.3, 1)]
    assert final["blimp"].step == 3 and final["ppl"].step == 3
    tie = stats.select([cp("A", 1, 1, ewok=5.0), cp("A", 1, 2, ewok=5.0)])[("A", 0.3, 1)]
    assert tie["ewok"].step == 1


def test_mean_se_relative_change_and_mu_delta_rel():
    m, se = stats.mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))
    assert stats.mean_se([4.0]) == (4.0, 0.0)
    assert stats.relative_change(55.0, 50.0, "blimp") == pytest.approx(10.0)
    assert stats.relative_change(45.0, 50.0, "ppl") == pytest.approx(10.0)  # lower ppl = positive
    rel = {"blimp": 1.0, "supplement": 2.0, "entity_tracking": 3.0, "ewok": 4.0, "wug": 5.0,
           "reading": 6.0, "eye_tracking": 7.0, "ppl": 100.0}
    assert stats.mu_delta_rel(rel) == pytest.approx(4.0)  # perplexity is not part of it


def test_index_sets_are_drawn_once_per_file():
    a = stats.index_sets("blimp", {"x": 5, "y": 5}, B=10)
    b = stats.index_sets("blimp", {"y": 5, "x": 5}, B=10)
    assert a["x"].shape == (10, 5) and (a["x"] == b["x"]).all() and (a["y"] == b["y"]).all()
    assert not (a["x"] == a["y"]).all()
    assert a["x"].min() >= 0 and a["x"].max() < 5


def test_paired_bootstrap_ci_and_one_sided_p():
    c = stats.paired_bootstrap(np.array([1.0, 2.0, 3.0, -1.0]), np.zeros(4), observed=1.25)
    # sorted diffs -1, 1, 2, 3: linear percentiles at 0.075 and 2.925 of the index range
    assert c.ci == pytest.approx((-0.85, 2.925))
    assert c.p == pytest.approx((1 + 1) / (4 + 1)) and not c.significant
    c = stats.paired_bootstrap(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4), observed=2.5)
    assert c.p == pytest.approx(1 / 5) and c.significant
    c = stats.paired_bootstrap(np.array([-1.0, -2.0, 1.0]), np.zeros(3), observed=-1.0)
    assert c.p == pytest.approx((1 + 1) / (3 + 1))  # negative effect: resamples >= 0 contradict


def test_resampled_macro_accuracy_by_hand():
    files = {"a": {"correct": np.array([1.0, 0.0])}, "b": {"correct": np.array([1.0, 1.0, 0.0, 0.0])}}
    idx = {"a": np.array([[0, 0], [1, 1]]), "b": np.array([[0, 1, 2, 3], [0, 0, 0, 0]])}
    r = stats.resampled("blimp", files, idx)["blimp"]
    assert r == pytest.approx([75.0, 50.0])  # (1 + .5)/2 and (0 + 1)/2
    assert babylm.task_scores("blimp", files)["blimp"] == pytest.approx(50.0)


def test_entity_tracking_is_mean_over_files_of_mean_over_numops():
    files = {"f": {"correct": np.array([1.0, 0.0, 0.0, 1.0]), "numops": np.array([0.0, 0.0, 1.0, 1.0])},
             "g": {"correct": np.array([1.0, 1.0, 1.0, 0.0]), "numops": np.array([0.0, 1.0, 1.0, 1.0])}}
    # f: (0.5 + 0.5)/2 = 0.5; g: (1 + 2/3)/2 = 5/6; mean = 2/3
    assert babylm.task_scores("entity_tracking", files)["entity_tracking"] == pytest.approx(200 / 3)
    idx = {"f": np.array([[0, 0, 2, 2]]), "g": np.array([[0, 1, 2, 3]])}
    # f resampled: numops 0 -> 1.0, numops 1 -> 0.0 => 0.5; g unchanged 5/6
    assert stats.resampled("entity_tracking", files, idx)["entity_tracking"] == pytest.approx(
        [100 * (0.5 + 5 / 6) / 2])


def test_wug_accuracy_and_spearman():
    files = {"w": {"correct": np.array([1.0, 1.0, 0.0, 1.0]), "ll_margin": np.array([1.0, 3.0, -1.0, 2.0]),
                   "ratio": np.array([0.6, 0.9, 0.2, 0.7])}}
    s = babylm.task_scores("wug", files)
    assert s["wug"] == pytest.approx(75.0) and s["wug_spearman"] == pytest.approx(1.0)
    assert babylm.spearman(np.array([1.0, 2.0, 2.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-math.sqrt(3) / 2)


def _item_dir(path, correct):
    babylm.write_items(path / "items" / "p1.jsonl",
                       [{"doc_id": i, "lls": [0.0, -1.0], "correct": float(c)} for i, c in enumerate(correct)])
    return path / "items"


def test_summarize_means_relative_change_and_bootstrap(tmp_path):
    data = {("BASELINE", 1): [1, 0, 1, 0], ("BASELINE", 2): [1, 1, 0, 0],
            ("CD", 1): [1, 1, 1, 0], ("CD", 2): [1, 1, 1, 1]}
    cps = []
    for (arm, seed), correct in data.items():
        d = _item_dir(tmp_path / f"{arm}{seed}", correct)
        c = cp(arm, seed, 10, blimp=100.0 * np.mean(correct), ppl=40.0 if arm == "BASELINE" else 38.0)
        c.item_dirs["blimp"] = d
        cps.append(c)
    rows = {r.arm: r for r in stats.summarize(cps, B=200)}
    base, cd = rows["BASELINE"], rows["CD"]
    assert base.cells["blimp"].mean == 50.0 and base.cells["blimp"].se == 0.0
    assert cd.cells["blimp"].mean == 87.5 and cd.cells["blimp"].se == pytest.approx(12.5)
    assert cd.cells["blimp"].rel == pytest.approx(75.0) and cd.cells["ppl"].rel == pytest.approx(5.0)
    assert cd.mu_delta_rel == pytest.approx(75.0) and cd.n_seeds == 2
    comp = cd.cells["blimp"].comparison
    assert comp.diff == pytest.approx(37.5) and comp.ci[0] <= 37.5 <= comp.ci[1]
    assert 1 / 201 <= comp.p <= 1 and comp.p == pytest.approx(round(comp.p * 201) / 201)
    # the same index sets for every model: an identical model differs by exactly 0 in every resample
    same = [Checkpoint("X", 0.3, c.seed, c.step, dict(c.scores), dict(c.item_dirs)) for c in cps
            if c.arm == "BASELINE"]
    x = {r.arm: r for r in stats.summarize(cps + same, B=50)}["X"].cells["blimp"].comparison
    assert x.ci == (0.0, 0.0) and x.p == 1.0 and not x.significant


def test_wug_spearman_is_shown_beside_accuracy_and_stays_out_of_mu_delta_rel(tmp_path):
    from cdray.eval.report import markdown_table

    def wug_dir(path, margins):
        babylm.write_items(path / "items" / "wug.jsonl",
                           [{"doc_id": i, "lls": [m, 0.0], "correct": float(m > 0), "ratio": r}
                            for i, (m, r) in enumerate(zip(margins, [0.1, 0.4, 0.6, 0.9]))])
        return path / "items"

    cps = []
    for arm, margins in (("BASELINE", [-1.0, 1.0, -0.5, 2.0]), ("CD", [1.0, 2.0, 3.0, 4.0])):
        files = babylm.load_item_dir(wug_dir(tmp_path / arm, margins))
        c = cp(arm, 1, 10, **babylm.task_scores("wug", files))
        c.item_dirs["wug"] = tmp_path / arm / "items"
        cps.append(c)
    rows = {r.arm: r for r in stats.summarize(cps, B=20)}
    assert rows["CD"].cells["wug_spearman"].mean == pytest.approx(1.0)
    assert rows["CD"].mu_delta_rel == pytest.approx(rows["CD"].cells["wug"].rel)  # accuracy only
    table = markdown_table(list(rows.values()), "t")
    assert "| WUG acc. | WUG ρ |" in table and "| 1.000 |" in table  # one seed: no ±
