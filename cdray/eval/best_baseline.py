"""Whether each synthetic arm beats the *best* BASELINE of a sweep that trains its BASELINE at
several settings (a regularisation axis such as train.weight_decay): perplexity by a paired
bootstrap over seeds, the BabyLM scores by the paired item bootstrap of cdray.eval.stats."""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np

from cdray.eval.stats import (PPL, ArmSummary, Checkpoint, Comparison, higher_is_better, is_baseline,
                              paired_bootstrap, select, summarize)

def best_baseline(rows: list[ArmSummary]) -> Optional[str]:
    """The BASELINE label with the lowest mean perplexity, when the sweep has more than one."""
    bases = [r for r in rows if is_baseline(r.arm) and PPL in r.cells]
    if len(bases) < 2:
        return None
    return min(bases, key=lambda r: r.cells[PPL].mean).arm


def seed_differences(checkpoints: list[Checkpoint], arm: str, q: float, base: str) -> dict[int, float]:
    """Per seed both have: the arm's best-checkpoint perplexity − the base's."""
    chosen = select(checkpoints, "best")
    mine = {k[2]: v[PPL].scores[PPL] for k, v in chosen.items() if (k[0], k[1]) == (arm, q) and PPL in v}
    theirs = {k[2]: v[PPL].scores[PPL] for k, v in chosen.items() if k[0] == base and PPL in v}
    return {s: mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))}


def seed_paired(checkpoints: list[Checkpoint], arm: str, q: float, base: str, B: int = 1000,
                seed: int = 42) -> Optional[Comparison]:
    """Perplexity (best checkpoint) of arm − base, paired by seed, bootstrapped over the seeds both
    have; None with fewer than two such seeds."""
    diffs = np.array(list(seed_differences(checkpoints, arm, q, base).values()))
    if len(diffs) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(diffs), size=(B, len(diffs)))
    return paired_bootstrap(diffs[idx].mean(axis=1), np.zeros(B), float(diffs.mean()))


def verdicts(checkpoints: list[Checkpoint], rows: list[ArmSummary], B: int = 1000) -> list[str]:
    """Markdown lines: each synthetic arm against the best BASELINE, then each arm family at its
    own best setting (the lowest perplexity), when the sweep has several BASELINE settings."""
    best = best_baseline(rows)
    if best is None:
        return []
    against = {(r.arm, r.q): r for r in summarize(checkpoints, "best", B=B, baseline_of=lambda arm: best)}
    base_ppl = next(r for r in rows if r.arm == best).cells[PPL].mean
    synthetic = [r for r in rows if not is_baseline(r.arm) and PPL in r.cells]
    lines = [f"#### Against the best BASELINE ({best}: the lowest perplexity, {base_ppl:.2f})", "",
             "Perplexity at each run's best checkpoint, arm − best BASELINE paired by seed and bootstrapped "
             "over the seeds; with a handful of seeds that interval is optimistic, so each seed's "
             "difference is shown too.", ""]
    for r in synthetic:
        lines.append("- " + _verdict(checkpoints, against[(r.arm, r.q)], best, B))
    families: dict[str, list[ArmSummary]] = defaultdict(list)
    for r in synthetic:
        families[r.arm.split(" ")[0]].append(r)
    tops = [min(rs, key=lambda r: r.cells[PPL].mean) for rs in families.values() if len(rs) > 1]
    if tops:
        lines += ["", "Each synthetic arm at its own best setting (its lowest perplexity):", ""]
        lines += ["- " + _verdict(checkpoints, against[(r.arm, r.q)], best, B) for r in tops]
    return lines + [""]


def _verdict(checkpoints: list[Checkpoint], r: ArmSummary, best: str, B: int) -> str:
    ppl = r.cells[PPL]
    c = seed_paired(checkpoints, r.arm, r.q, best, B)
    if c is None:
        ppl_text = f"perplexity {ppl.mean:.2f} (Δ {ppl.rel:+.2f}%; fewer than two paired seeds: no interval)"
        beats = None
    else:
        beats = c.diff < 0 and c.ci[1] < 0
        per_seed = ", ".join(f"{s} {d:+.2f}" for s, d in seed_differences(checkpoints, r.arm, r.q, best).items())
        ppl_text = (f"perplexity {ppl.mean:.2f}, Δ {ppl.rel:+.2f}% (arm − best BASELINE {c.diff:+.2f}, "
                    f"95% CI [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] over {r.n_seeds} seeds, one-sided p {c.p:.3f}; "
                    f"by seed: {per_seed})")
    tasks = [(s, cell.comparison) for s, cell in r.cells.items() if s != PPL and cell.comparison is not None]
    worse = sum(1 for s, k in tasks if k.significant and k.diff * _sign(s) < 0)
    better = sum(1 for s, k in tasks if k.significant and k.diff * _sign(s) > 0)
    word = {True: "beats it", False: "does not beat it", None: "undecided"}[beats]
    babylm = (f"; BabyLM: better on {better}, worse on {worse} of {len(tasks)} scores (95% CI excluding 0)"
              if tasks else "")
    return f"{r.arm} q={r.q:g}: {word} on perplexity: {ppl_text}{babylm}"


def _sign(score: str) -> int:
    return 1 if higher_is_better(score) else -1
