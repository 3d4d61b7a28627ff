"""The paper's report of a sweep: the arm table in markdown (mean±se* (rel%)) and its two figures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from cdray.eval.babylm import SCORES, SHOWN_SCORES
from cdray.eval.stats import BASELINE, PPL, ArmSummary, Checkpoint

COLUMNS = {"blimp": "BLiMP", "supplement": "Supp.", "entity_tracking": "ET", "ewok": "EWoK", "wug": "WUG acc.",
           "wug_spearman": "WUG ρ", "reading": "Reading", "eye_tracking": "Eye tracking"}
DIGITS = {"wug_spearman": 3}  # a correlation coefficient, not a percentage


def collect(graph, store) -> list[Checkpoint]:
    """Every evaluated milestone of the sweep's cells: perplexity and BabyLM scores, item dirs."""
    out = []
    for cell in graph.cells:
        cps: dict[int, Checkpoint] = {}
        if store.is_done(cell.evaluate.stage, cell.evaluate.key):
            for m in store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]["milestones"]:
                cps[m["step"]] = Checkpoint(cell.arm, cell.q, cell.seed, m["step"], {PPL: m["ppl"]})
        for node in cell.babylm:
            if node.config["task"].startswith("lm_eval:") or not store.is_done(node.stage, node.key):
                continue
            st = store.manifest(node.stage, node.key)["stats"]
            c = cps.setdefault(st["step"], Checkpoint(cell.arm, cell.q, cell.seed, st["step"]))
            c.scores.update({k: v for k, v in st["scores"].items() if k in SCORES or k in SHOWN_SCORES})
            c.item_dirs[st["task"]] = store.dir(node.stage, node.key) / "items"
        out += cps.values()
    return out


def context_cuts(graph, store) -> Optional[str]:
    """One line: per task, the share of items longer than the model's context, which lm-eval
    scored after cutting the context from the left (the official pipeline feeds them whole), or
    None when no item was cut."""
    shares: dict[str, list[float]] = {}
    for cell in graph.cells:
        for node in cell.babylm:
            if store.is_done(node.stage, node.key):
                st = store.manifest(node.stage, node.key)["stats"]
                shares.setdefault(st["task"], []).extend((st.get("truncated") or {}).values())
    cut = {t: 100.0 * sum(v) / len(v) for t, v in shares.items() if v and sum(v) > 0}
    if not cut:
        return None
    return ("Items longer than the model's context, scored after lm-eval cut their context from the "
            "left (the official BabyLM pipeline feeds them whole): "
            + ", ".join(f"{COLUMNS.get(t, t)} {v:.1f}%" for t, v in sorted(cut.items())) + ".")


def _fmt(v: float, digits: int = 2) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def cell_text(summary: ArmSummary, score: str) -> str:
    c = summary.cells.get(score)
    if c is None:
        return "—"
    mark = "*" if c.comparison is not None and c.comparison.significant else ""
    digits = DIGITS.get(score, 2)
    text = f"{_fmt(c.mean, digits)}±{_fmt(c.se, digits)}{mark}"
    # a relative change of a correlation near 0 says nothing: its Δ and CI are in the bootstrap table
    if summary.arm != BASELINE and math.isfinite(c.rel) and score not in DIGITS:
        text += f" ({c.rel:+.2f}%)"
    return text


def markdown_table(rows: list[ArmSummary], title: str) -> str:
    head = ["arm", "q", "μΔREL", "PPL (Δ%)", *COLUMNS.values(), "n_seeds"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mu = "—" if r.arm == BASELINE else (f"{r.mu_delta_rel:+.2f}%" if math.isfinite(r.mu_delta_rel) else "—")
        ppl = r.cells.get(PPL)
        ppl_text = "—" if ppl is None else f"{_fmt(ppl.mean)}±{_fmt(ppl.se)}" + (
            f" ({ppl.rel:+.2f}%)" if r.arm != BASELINE and math.isfinite(ppl.rel) else "")
        cells = [cell_text(r, s) for s in COLUMNS]
        lines.append("| " + " | ".join([r.arm, f"{r.q:g}", mu, ppl_text, *cells, str(r.n_seeds)]) + " |")
    return "\n".join(lines)


def legend(B: int = 1000, seed: int = 42) -> str:
    return ("Cells: mean±se over seeds (relative change vs BASELINE). * = the paired bootstrap's 95% CI of "
            f"(arm − BASELINE) excludes 0 (B={B} index sets per item file, seed {seed}, shared by all models). "
            "μΔREL = mean relative change over the paper's seven BabyLM scores (BLiMP, Supp., ET, EWoK, "
            "WUG acc., Reading, Eye tracking; WUG ρ is shown, not averaged); PPL Δ = (baseline − arm)/baseline, "
            "positive is better. Accuracies in %; WUG acc. = sentence 0 ranked first (the paper's score), "
            "WUG ρ = Spearman's ρ with the human ratio (BabyLM 2025's score); Reading and Eye tracking are "
            "ΔR² × 100.")


def bootstrap_table(rows: list[ArmSummary]) -> str:
    lines = ["| arm | q | score | Δ vs BASELINE | 95% CI | one-sided p |", "|---|---|---|---|---|---|"]
    for r in rows:
        for s in COLUMNS:
            c = r.cells.get(s)
            if c is None or c.comparison is None:
                continue
            b = c.comparison
            lines.append(f"| {r.arm} | {r.q:g} | {COLUMNS[s]} | {b.diff:+.3f} | "
                         f"[{_fmt(b.ci[0], 3)}, {_fmt(b.ci[1], 3)}] | {_fmt(b.p, 4)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _series_key(arm: str) -> str:
    return "NO-CONTRAST" if arm.startswith("NO-CONTRAST") and arm == "NO-CONTRAST" else arm


def truncation_figure(settings: list[tuple[str, list[ArmSummary]]], path: Path) -> Optional[Path]:
    """Grouped bars: μΔREL and PPL Δ per truncation setting, one bar per arm (CD vs no-contrast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = sorted({(r.arm, r.q) for _, rows in settings for r in rows if r.arm != BASELINE},
                  key=lambda a: (not a[0].startswith("NO-CONTRAST"), a[0], a[1]))
    if not arms:
        return None
    multi_q = len({q for _, q in arms}) > 1
    labels = [s for s, _ in settings]
    x = np.arange(len(labels))
    width = min(0.8 / len(arms), 0.3)
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 0.9 * len(labels) + 5), 4.2))
    for ax, what, ylabel in ((axes[0], "mu", "μΔREL vs BASELINE (%)"), (axes[1], "ppl", "PPL Δ vs BASELINE (%)")):
        for i, (arm, q) in enumerate(arms):
            vals, errs = [], []
            for _, rows in settings:
                r = next((r for r in rows if (r.arm, r.q) == (arm, q)), None)
                if r is None:
                    vals.append(np.nan), errs.append(0)
                elif what == "mu":
                    vals.append(r.mu_delta_rel), errs.append(_nz(r.mu_delta_rel_se))
                else:
                    c, base = r.cells.get(PPL), next((b for b in rows if b.arm == BASELINE), None)
                    bm = base.cells[PPL].mean if base and PPL in base.cells else math.nan
                    vals.append(c.rel if c else np.nan)
                    errs.append(_nz(100 * c.se / bm) if c and bm else 0)
            label = f"{arm} (q={q:g})" if multi_q else arm
            bars = ax.bar(x + (i - (len(arms) - 1) / 2) * width, vals, width, yerr=errs, capsize=3, label=label)
            ax.bar_label(bars, fmt="%+.2f", fontsize=7, padding=2)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, labels)
        ax.set_xlabel("truncation setting")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("BabyLM tasks: μΔREL (higher is better)")
    axes[1].set_title("Perplexity change (higher is better)")
    for ax in axes:
        ax.margins(y=0.15)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    fig.suptitle("Truncation sweep: synthetic-data arms vs BASELINE (error bars: se over seeds)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _nz(v: float) -> float:
    return v if v is not None and math.isfinite(v) else 0.0


def mixing_figure(rows: list[ArmSummary], path: Path) -> Optional[Path]:
    """μΔREL and PPL Δ against the synthetic fraction q, one line per arm (q = 0 is BASELINE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({r.arm for r in rows if r.arm != BASELINE})
    base = next((r for r in rows if r.arm == BASELINE), None)
    if not arms or base is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm in arms:
        pts = sorted((r for r in rows if r.arm == arm), key=lambda r: r.q)
        qs = [0.0] + [r.q for r in pts]
        mu = [0.0] + [r.mu_delta_rel for r in pts]
        mu_err = [0.0] + [_nz(r.mu_delta_rel_se) for r in pts]
        bm = base.cells[PPL].mean if PPL in base.cells else math.nan
        ppl = [0.0] + [r.cells[PPL].rel if PPL in r.cells else math.nan for r in pts]
        ppl_err = [0.0] + [_nz(100 * r.cells[PPL].se / bm) if PPL in r.cells else 0.0 for r in pts]
        axes[0].errorbar(qs, mu, yerr=mu_err, marker="o", capsize=3, label=arm)
        axes[1].errorbar(qs, ppl, yerr=ppl_err, marker="o", capsize=3, label=arm)
    for ax, ylabel, title in ((axes[0], "μΔREL vs BASELINE (%)", "BabyLM tasks: μΔREL"),
                              (axes[1], "PPL Δ vs BASELINE (%)", "Perplexity change")):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("synthetic fraction q")
        ax.set_ylabel(ylabel)
        ax.set_title(title + " (higher is better)")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle("Mixing ratio: arms vs BASELINE (q = 0); error bars: se over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def truncation_label(cfg) -> str:
    d = cfg.generation.decoding
    parts = []
    if d.top_p is not None:
        parts.append(f"P-{d.top_p:g}".replace("0.", "."))
    if d.top_k is not None:
        parts.append(f"K-{d.top_k}")
    return "+".join(parts) or "none"
