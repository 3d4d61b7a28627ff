"""The report's figures: every arm against BASELINE per score, the truncation sweep and the q curve.

A panel is drawn only for a score the sweep measured (perplexity always; μΔREL and one panel per
BabyLM task when it was evaluated), error bars are the se over seeds, and an arm whose paired
bootstrap CI excludes 0 is marked with *. A figure with nothing to show is not drawn.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from cdray.eval.babylm import SCORES
from cdray.eval.stats import PPL, ArmSummary, is_baseline

TITLES = {PPL: "Perplexity", "mu": "μΔREL (the paper's seven scores)", "blimp": "BLiMP", "supplement": "BLiMP supp.",
          "entity_tracking": "Entity tracking", "ewok": "EWoK", "wug": "WUG (accuracy)", "reading": "Reading (SPR)",
          "eye_tracking": "Eye tracking"}
PAPER_Q = 0.3  # the paper's headline synthetic fraction


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nz(v) -> float:
    return v if v is not None and math.isfinite(v) else 0.0


def _value(row: ArmSummary, score: str, base: Optional[ArmSummary]) -> tuple[float, float, bool]:
    """(relative change %, its se in %, significant) of an arm on a score ("mu": μΔREL)."""
    if score == "mu":
        return row.mu_delta_rel, _nz(row.mu_delta_rel_se), False
    c = row.cells.get(score)
    if c is None:
        return math.nan, 0.0, False
    b = base.cells.get(score) if base else None
    se = 100 * c.se / abs(b.mean) if b and b.mean else 0.0
    return c.rel, _nz(se), bool(c.comparison and c.comparison.significant)


def panels(rows: list[ArmSummary]) -> list[str]:
    """The scores the rows hold a relative change for: perplexity, then μΔREL and each task."""
    have = {s for r in rows if not is_baseline(r.arm) for s, c in r.cells.items() if math.isfinite(c.rel)}
    out = [PPL] if PPL in have else []
    if any(s in have for s in SCORES):
        out += ["mu", *(s for s in SCORES if s in have)]
    return out


def arms_figure(rows: list[ArmSummary], path: Path, title: str) -> Optional[Path]:
    """Bars of every arm's change vs BASELINE, one panel per measured score."""
    arms = [r for r in rows if not is_baseline(r.arm)]
    scores = panels(rows)
    if not arms or not scores:
        return None
    plt = _plt()
    base = next((r for r in rows if is_baseline(r.arm)), None)
    cols = min(4, len(scores))
    nrows = -(-len(scores) // cols)
    width = max(3.6, 1.15 * len(arms))  # a panel wide enough for its bars' labels
    fig, axes = plt.subplots(nrows, cols, figsize=(max(7.0, width * cols), 3.4 * nrows), squeeze=False)
    # an arm's name and each of its axis values on a line of its own: side by side they overlap
    labels = ["\n".join([*r.arm.split(" "), f"q={r.q:g}"]) for r in arms]
    size = 7 if len(arms) <= 3 else 6
    for ax, score in zip(axes.flat, scores):
        vals, errs, marks = zip(*(_value(r, score, base) for r in arms))
        colors = ["tab:green" if v > 0 else "tab:red" for v in vals]
        bars = ax.bar(range(len(arms)), vals, yerr=errs, capsize=3, color=colors, alpha=0.8)
        for bar, v, e, sig in zip(bars, vals, errs, marks):
            if math.isfinite(v):
                tip = v + e if v >= 0 else v - e  # beyond the error bar
                ax.annotate(f"{v:+.1f}%{'*' if sig else ''}", (bar.get_x() + bar.get_width() / 2, tip),
                            ha="center", va="bottom" if v >= 0 else "top", fontsize=7,
                            xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(arms)), labels, fontsize=size)
        ax.set_title(TITLES.get(score, score), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.2)
    for ax in axes.flat[len(scores):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("change vs BASELINE (%; > 0: better)")
    seeds = max(r.n_seeds for r in rows)
    how = f"error bars: se over {seeds} seeds; " if seeds > 1 else "one seed: no error bars; "
    fig.suptitle(f"{title}: change vs BASELINE at the best checkpoint\n({how}* the paired bootstrap's "
                 f"95% CI excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def truncation_figure(settings: list[tuple[str, list[ArmSummary]]], path: Path) -> Optional[Path]:
    """Grouped bars per truncation setting (several sweeps): PPL Δ, and μΔREL when measured."""
    if len(settings) < 2:
        return None
    arms = sorted({(r.arm, r.q) for _, rows in settings for r in rows if not is_baseline(r.arm)})
    scores = [s for s in (PPL, "mu") if s in panels([r for _, rows in settings for r in rows])]
    if not arms or not scores:
        return None
    plt = _plt()
    import numpy as np

    x = np.arange(len(settings))
    width = min(0.8 / len(arms), 0.3)
    fig, axes = plt.subplots(1, len(scores), figsize=(max(6, 0.9 * len(settings) + 4) * len(scores) / 1.6, 4.2),
                             squeeze=False)
    for ax, score in zip(axes[0], scores):
        for i, (arm, q) in enumerate(arms):
            vals, errs = [], []
            for _, rows in settings:
                row = next((r for r in rows if (r.arm, r.q) == (arm, q)), None)
                base = next((r for r in rows if is_baseline(r.arm)), None)
                v, e, _ = _value(row, score, base) if row else (math.nan, 0.0, False)
                vals.append(v), errs.append(e)
            ax.bar(x + (i - (len(arms) - 1) / 2) * width, vals, width, yerr=errs, capsize=3, label=f"{arm} q={q:g}")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, [s for s, _ in settings])
        ax.set_xlabel("truncation setting")
        ax.set_title(TITLES[score] + " vs BASELINE (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Truncation sweep (error bars: se over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mixing_figure(rows: list[ArmSummary], path: Path) -> Optional[Path]:
    """Change vs BASELINE against the synthetic fraction q (q = 0 is BASELINE), one line per arm;
    drawn only for arms measured at two or more q > 0, with the paper's q = 0.3 marked."""
    arms = sorted({r.arm for r in rows if not is_baseline(r.arm) and sum(x.arm == r.arm for x in rows) >= 2})
    scores = [s for s in (PPL, "mu") if s in panels(rows)]
    base = next((r for r in rows if is_baseline(r.arm)), None)
    if not arms or not scores or base is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(scores), figsize=(5.5 * len(scores), 4.2), squeeze=False)
    for ax, score in zip(axes[0], scores):
        for arm in arms:
            pts = sorted((r for r in rows if r.arm == arm), key=lambda r: r.q)
            vals = [_value(r, score, base) for r in pts]
            ax.errorbar([0.0] + [r.q for r in pts], [0.0] + [v for v, _, _ in vals],
                        yerr=[0.0] + [e for _, e, _ in vals], marker="o", capsize=3, label=arm)
        ax.axvline(PAPER_Q, color="grey", linestyle=":", label="the paper's q = 0.3")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("synthetic fraction q")
        ax.set_title(TITLES[score] + " vs BASELINE (%; > 0: better)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Mixing ratio (error bars: se over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def arm_table_figure(agg: list[dict], path: Path, title: str) -> Optional[Path]:
    """The arm table as a picture: each arm's perplexity (± sd over seeds), BASELINE's as a line."""
    if not agg:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(agg) + 2), 3.6))
    names = [f"{a['arm']}\nq={a['q']:g}" for a in agg]
    colors = ["grey" if is_baseline(a["arm"]) else ("tab:green" if (a["rel_pct"] or 0) > 0 else "tab:red") for a in agg]
    errs = [a["sd"] if a["n_seeds"] > 1 else 0.0 for a in agg]
    bars = ax.bar(range(len(agg)), [a["mean"] for a in agg], yerr=errs, capsize=3, color=colors, alpha=0.8)
    for bar, a in zip(bars, agg):
        rel = "" if a["rel_pct"] is None else f"\n{a['rel_pct']:+.1f}%"
        ax.annotate(f"{a['mean']:.1f}{rel}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    base = next((a["mean"] for a in agg if is_baseline(a["arm"])), None)
    if base is not None:
        ax.axhline(base, color="black", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(agg)), names, fontsize=7)
    ax.set_ylabel("eval perplexity (lower is better)")
    seeds = max(a["n_seeds"] for a in agg)
    ax.set_title(f"{title}: perplexity per arm ({seeds} seed{'s' if seeds > 1 else ''}"
                 f"{', error bars: sd' if seeds > 1 else ''})", fontsize=9)
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
