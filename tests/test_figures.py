"""The report's figures: a panel only for what was measured, nothing drawn when nothing is to show."""
from __future__ import annotations

import math

from cdray.eval.figures import arm_table_figure, arms_figure, mixing_figure, panels, truncation_figure
from cdray.eval.stats import ArmSummary, Cell, Comparison


def _arm(arm, q, ppl_rel, blimp_rel=None, seeds=3):
    cells = {"ppl": Cell(100 - ppl_rel, 2.0, seeds, rel=ppl_rel if arm != "BASELINE" else math.nan)}
    if blimp_rel is not None:
        cells["blimp"] = Cell(60 + blimp_rel, 0.5, seeds, rel=blimp_rel if arm != "BASELINE" else math.nan,
                              comparison=Comparison(blimp_rel, (0.1, 1.0), 0.01, True) if arm != "BASELINE" else None)
    mu = blimp_rel if blimp_rel is not None and arm != "BASELINE" else math.nan
    return ArmSummary(arm, q, seeds, cells, mu, 0.5)


def test_perplexity_only_gives_one_panel_and_no_q_curve(tmp_path):
    rows = [_arm("BASELINE", 0, 0), _arm("NO-CONTRAST", 0.3, -2.0), _arm("CD-EARLY-62", 0.3, 1.0)]
    assert panels(rows) == ["ppl"]
    assert arms_figure(rows, tmp_path / "arms.png", "t") == tmp_path / "arms.png"
    assert mixing_figure(rows, tmp_path / "mixing.png") is None  # one q per arm: no curve
    assert truncation_figure([("none", rows)], tmp_path / "truncation.png") is None  # one setting
    assert not (tmp_path / "mixing.png").exists()


def test_babylm_scores_add_mu_delta_rel_and_a_panel_per_task(tmp_path):
    rows = [_arm("BASELINE", 0, 0, 0.0), _arm("CD-EARLY-62", 0.1, 1.0, 2.0), _arm("CD-EARLY-62", 0.3, 2.0, 3.0)]
    assert panels(rows) == ["ppl", "mu", "blimp"]
    assert arms_figure(rows, tmp_path / "arms.png", "t") is not None
    assert mixing_figure(rows, tmp_path / "mixing.png") is not None  # two q > 0: a curve
    agg = [{"arm": "BASELINE", "q": 0.0, "n_seeds": 1, "mean": 100.0, "sd": 0.0, "rel_pct": None},
           {"arm": "NO-CONTRAST", "q": 0.3, "n_seeds": 1, "mean": 90.0, "sd": 0.0, "rel_pct": 10.0}]
    assert arm_table_figure(agg, tmp_path / "table.png", "t").stat().st_size > 0


def test_one_sweep_with_an_axis_over_the_decoding_is_a_truncation_figure(tmp_path):
    """The paper's truncation sweep as one sweep file: its rows split by each corpus's truncation,
    the BASELINE in every setting, the arms under their bare names."""
    from pathlib import Path

    from cdray import config as C
    from cdray.dag.graph import build_graph
    from cdray.eval.report import by_truncation

    tiny = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"
    cfg = C.load(tiny, ["grid.k=[50]", "grid.fields={generation.decoding: [{}, {top_k: 50}, {top_p: 0.9}]}"])
    graph = build_graph(cfg)
    rows = [_arm(c.label, c.q, 1.0 + i) for i, c in enumerate(graph.cells)]
    settings = by_truncation(graph.cells, rows)
    assert [label for label, _ in settings] == ["none", "K-50", "P-.9"]
    for _, setting in settings:
        assert sorted(r.arm for r in setting) == ["BASELINE", "CD-EARLY-50", "NO-CONTRAST"]
    assert truncation_figure(settings, tmp_path / "truncation.png") == tmp_path / "truncation.png"
    assert by_truncation(build_graph(C.load(tiny)).cells, rows) == []  # one truncation: no split


def test_arms_named_by_axis_values_get_panels_wide_enough_for_their_labels(tmp_path):
    """Four arms of a weight-decay axis: each label's parts on lines of their own and a panel as
    wide as its bars need (side by side on a fixed width they overlapped)."""
    from matplotlib.image import imread

    few = [_arm("BASELINE", 0, 0, 0.0), _arm("NO-CONTRAST", 0.3, 2.0, 1.0)]
    many = [_arm("BASELINE weight_decay=0.1", 0, 0, 0.0)] + [_arm(f"NO-CONTRAST weight_decay={wd}", 0.3, 1.0, 1.0)
                                                              for wd in ("0.1", "1.0", "2.0", "3.0", "10.0", "30.0")]
    narrow = imread(arms_figure(few, tmp_path / "few.png", "t")).shape[1]
    wide = imread(arms_figure(many, tmp_path / "many.png", "t")).shape[1]
    assert wide >= 1.9 * narrow  # 3 panels of 6 bars: 6.9 inches each against the 3.6-inch floor
