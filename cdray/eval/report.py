"""The paper's report of a sweep: the arm table in markdown (mean±se* (rel%)) and its two figures."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from cdray.eval.babylm import SCORES, SHOWN_SCORES
from cdray.eval.stats import PPL, ArmSummary, Checkpoint, is_baseline

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
                cps[m["step"]] = Checkpoint(cell.label, cell.q, cell.seed, m["step"], {PPL: m["ppl"]})
        for node in cell.babylm:
            if node.config["task"].startswith("lm_eval:") or not store.is_done(node.stage, node.key):
                continue
            st = store.manifest(node.stage, node.key)["stats"]
            c = cps.setdefault(st["step"], Checkpoint(cell.label, cell.q, cell.seed, st["step"]))
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
    spread = f"±{_fmt(c.se, digits)}" if summary.n_seeds > 1 else ""  # one seed: no spread to show
    text = f"{_fmt(c.mean, digits)}{spread}{mark}"
    # a relative change of a correlation near 0 says nothing: its Δ and CI are in the bootstrap table
    if not is_baseline(summary.arm) and math.isfinite(c.rel) and score not in DIGITS:
        text += f" ({c.rel:+.2f}%)"
    return text


def markdown_table(rows: list[ArmSummary], title: str) -> str:
    """The paper's table: μΔREL, perplexity and the BabyLM columns the sweep measured (none of them
    without BabyLM data), mean±se over seeds (no spread with one seed), Δ vs BASELINE."""
    columns = {s: name for s, name in COLUMNS.items() if any(s in r.cells for r in rows)}
    head = ["arm", "q", *(["μΔREL"] if columns else []), "PPL (Δ%)", *columns.values(), "n_seeds"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mu = "—" if is_baseline(r.arm) else (f"{r.mu_delta_rel:+.2f}%" if math.isfinite(r.mu_delta_rel) else "—")
        ppl = cell_text(r, PPL)
        cells = [cell_text(r, s) for s in columns]
        lines.append("| " + " | ".join([r.arm, f"{r.q:g}", *([mu] if columns else []), ppl, *cells,
                                        str(r.n_seeds)]) + " |")
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
    if len(lines) == 2:  # perplexity has no items to resample: an empty table would read as a failure
        return ("No arm has item scores to compare with its BASELINE: the item bootstrap covers the BabyLM "
                "tasks, and perplexity has no items.")
    return "\n".join(lines)


def truncation_label(cfg) -> str:
    return decoding_label(dataclasses.asdict(cfg.generation.decoding))


def decoding_label(decoding: dict) -> str:
    """A corpus's truncation as the paper names it: none, K-50, P-.9, P-.9+K-50 (each rule's own label)."""
    from cdray.decode.truncation import label

    return label(decoding)


def by_truncation(cells, rows: list) -> list[tuple[str, list]]:
    """One sweep's summary rows split by its corpora's truncation (an axis over generation.decoding),
    each setting with the BASELINE rows and its arms under their bare names: the settings of the
    truncation figure. [] when the corpora share one truncation."""
    label_of, bare = {}, {}
    for c in cells:
        if c.train.has_input("synthetic"):
            gen = c.train.input("synthetic").input("generate").config["generation"]
            label_of[c.label], bare[c.label] = decoding_label(gen.get("decoding") or {}), c.arm
    if len(set(label_of.values())) < 2:
        return []
    settings: dict[str, list] = {}
    for r in rows:
        if r.arm in label_of:
            settings.setdefault(label_of[r.arm], []).append(dataclasses.replace(r, arm=bare[r.arm]))
    base = [r for r in rows if r.arm not in label_of]
    return [(label, base + arms) for label, arms in settings.items()]
