"""The arm table: per (arm, q) mean ± sd over seeds and relative change vs BASELINE."""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Iterable


def aggregate(rows: Iterable[dict], metric: str = "final_ppl") -> list[dict]:
    """Group cell rows by (arm, q); mean and sample sd over seeds; Δ vs BASELINE (positive = better)."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            groups[(r["arm"], float(r["q"]))].append(r)
    baseline = [r[metric] for (arm, _), rs in groups.items() if arm == "BASELINE" for r in rs]
    base_mean = statistics.fmean(baseline) if baseline else None
    out = []
    for (arm, q), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "BASELINE", kv[0][0], kv[0][1])):
        values = [r[metric] for r in rs]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        rel = None if base_mean is None or arm == "BASELINE" else 100.0 * (base_mean - mean) / base_mean
        realised = [r["realised_q"] for r in rs if r.get("realised_q") is not None]
        out.append({"arm": arm, "q": q, "n_seeds": len(values), "mean": mean, "sd": sd, "rel_pct": rel,
                    "realised_q": statistics.fmean(realised) if realised else None})
    return out


def format_table(rows: Iterable[dict], metric: str = "final_ppl") -> str:
    agg = aggregate(rows, metric)
    if not agg:
        return "(no finished cells)"
    width = max(len("arm"), *(len(a["arm"]) for a in agg))
    head = f"{'arm':<{width}}  {'q':>5}  {'real q':>7}  {'seeds':>5}  {'perplexity (mean ± sd)':>24}  {'Δ vs BASELINE':>13}"
    lines = [head, "-" * len(head)]
    for a in agg:
        ppl = f"{a['mean']:.2f} ± {a['sd']:.2f}"
        rel = "—" if a["rel_pct"] is None else f"{a['rel_pct']:+.2f}%"
        real = "—" if a["realised_q"] is None else f"{a['realised_q']:.4f}"
        lines.append(f"{a['arm']:<{width}}  {a['q']:>5g}  {real:>7}  {a['n_seeds']:>5}  {ppl:>24}  {rel:>13}")
    lines.append(f"perplexity = {metric.replace('_', ' ')} on the eval split; "
                 "Δ = (baseline − arm) / baseline, positive is better")
    return "\n".join(lines)
