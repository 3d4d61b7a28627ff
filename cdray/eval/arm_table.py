"""The arm table: per (arm, q) mean ± sd over seeds and relative change vs BASELINE."""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Iterable


def aggregate(rows: Iterable[dict], metric: str = "final_ppl") -> list[dict]:
    """Group cell rows by (arm, q); mean and sample sd over seeds; Δ vs the arm's BASELINE (its row's
    "baseline": the BASELINE with the arm's grid.fields values, else the plain one; positive = better)."""
    from cdray.eval.stats import is_baseline, nearest_baseline

    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            groups[(r["arm"], float(r["q"]))].append(r)
    base_means = {arm: statistics.fmean(r[metric] for r in rs) for (arm, _), rs in groups.items() if is_baseline(arm)}
    out = []
    for (arm, q), rs in sorted(groups.items(), key=lambda kv: (not is_baseline(kv[0][0]), kv[0][0], kv[0][1])):
        values = [r[metric] for r in rs]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        base_mean = base_means.get(rs[0].get("baseline") or nearest_baseline(arm))
        rel = None if base_mean is None or is_baseline(arm) else 100.0 * (base_mean - mean) / base_mean
        realised = [r["realised_q"] for r in rs if r.get("realised_q") is not None]
        out.append({"arm": arm, "q": q, "n_seeds": len(values), "mean": mean, "sd": sd, "rel_pct": rel,
                    "realised_q": statistics.fmean(realised) if realised else None})
    return out


def format_table(rows: Iterable[dict], metric: str = "final_ppl") -> str:
    """The arm table: mean (± sd over seeds when there are several) and Δ vs BASELINE per arm."""
    agg = aggregate(rows, metric)
    if not agg:
        return "(no finished cells)"
    several = any(a["n_seeds"] > 1 for a in agg)
    width = max(len("arm"), *(len(a["arm"]) for a in agg))
    what = "perplexity (mean ± sd)" if several else "perplexity"
    head = f"{'arm':<{width}}  {'q':>5}  {'real q':>7}  {'seeds':>5}  {what:>24}  {'Δ vs BASELINE':>13}"
    lines = [head, "-" * len(head)]
    for a in agg:
        ppl = f"{a['mean']:.2f} ± {a['sd']:.2f}" if several else f"{a['mean']:.2f}"
        rel = "—" if a["rel_pct"] is None else f"{a['rel_pct']:+.2f}%"
        real = "—" if a["realised_q"] is None else f"{a['realised_q']:.4f}"
        lines.append(f"{a['arm']:<{width}}  {a['q']:>5g}  {real:>7}  {a['n_seeds']:>5}  {ppl:>24}  {rel:>13}")
    lines.append(f"perplexity = {metric.replace('_', ' ')} on the eval split; "
                 "Δ = (baseline − arm) / baseline, positive is better")
    return "\n".join(lines)


def regime_line(epochs: float, seeds: int) -> str:
    """What a table's numbers can say, given the recipe's passes over the real data and seeds
    (the paper: ~16 epochs, 10 seeds; its gains need that data-constrained regime)."""
    plural = "s" if seeds != 1 else ""
    if epochs < 8:
        return (f"regime: a smoke test outside the paper's ({epochs:.1f} epochs over the real data, "
                f"{seeds} seed{plural}; the paper: ~16 epochs, 10 seeds); "
                f"the measured answer is in docs/replication.md")
    if seeds < 3:
        return (f"regime: {epochs:.1f} epochs over the real data (the paper: ~16), but {seeds} "
                f"seed{plural}: too few for a confidence interval (the paper: 10); "
                f"compare with docs/replication.md")
    return (f"regime: {epochs:.1f} epochs over the real data, {seeds} seeds, as the paper's "
            f"(~16 epochs); compare with docs/replication.md")


def format_markdown(rows: Iterable[dict], metric: str = "final_ppl") -> str:
    """The arm table as markdown (the sweep's MLflow parent run keeps it as an artifact)."""
    agg = aggregate(rows, metric)
    several = any(a["n_seeds"] > 1 for a in agg)
    lines = ["| arm | q | realised q | seeds | perplexity | Δ vs BASELINE |", "|---|---|---|---|---|---|"]
    for a in agg:
        ppl = f"{a['mean']:.2f} ± {a['sd']:.2f}" if several else f"{a['mean']:.2f}"
        rel = "—" if a["rel_pct"] is None else f"{a['rel_pct']:+.2f}%"
        real = "—" if a["realised_q"] is None else f"{a['realised_q']:.4f}"
        lines.append(f"| {a['arm']} | {a['q']:g} | {real} | {a['n_seeds']} | {ppl} | {rel} |")
    lines.append("")
    lines.append(f"perplexity = {metric.replace('_', ' ')} on the eval split (± sd over seeds); "
                 "Δ = (baseline − arm) / baseline, positive is better")
    return "\n".join(lines)
