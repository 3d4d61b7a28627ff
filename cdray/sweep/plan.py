"""Planning a sweep without running it: paths anchored to the driver, the sweep's identity,
every stage in build order with its key and whether it is built, and a line about the cells."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from cdray.config import SweepConfig
from cdray.dag.graph import SweepGraph, build_graph
from cdray.dag.keys import identity_dict, stage_key
from cdray.dag.store import Store
from cdray.tracking.runs import resolve_uri

Echo = Callable[[str], None]


def open_store(cfg: SweepConfig) -> Store:
    return Store.at(cfg.store.root, cfg.store.cache)


def anchored(cfg: SweepConfig) -> SweepConfig:
    """Resolve relative store / tracking / data paths against the driver's cwd (trials run
    elsewhere): data_root becomes absolute (None: the cwd), so relative source paths mean the
    same on every node; URIs are left as they are."""
    from cdray.data.source_files import anchor_root, resolve

    opened = Store.at(cfg.store.root, cfg.store.cache)
    store = replace(cfg.store, root=opened.location, cache=str(opened.root) if opened.remote else None)
    tracking = replace(cfg.tracking, uri=resolve_uri(cfg.tracking.uri))
    data_root = anchor_root(cfg.data_root)
    ev = cfg.eval
    if ev.babylm_dir:
        ev = replace(ev, babylm_dir=resolve(ev.babylm_dir, data_root))
    return replace(cfg, store=store, tracking=tracking, eval=ev, data_root=data_root)


def _identity(cfg: SweepConfig) -> dict:
    """What a sweep computes: everything but where it runs and is stored (and fields marked ADDED
    while they hold their default, as in the stage keys: a sweep keeps its runs)."""
    d = identity_dict(cfg)
    for plumbing in ("store", "tracking", "ray", "profile", "data_root"):
        d.pop(plumbing)
    for where in ("babylm_dir", "fetch_url", "fetch_sha256"):  # the babylm nodes hash the data itself
        d["eval"].pop(where)
    d["grid"].pop("max_cells")  # a guard on the grid's size, not part of it
    return d


def sweep_key(cfg: SweepConfig) -> str:
    """Identity of a sweep: its recipe and its grid or search (Tune's experiment is named by it)."""
    return stage_key("sweep", 1, _identity(cfg), {})


def family_key(cfg: SweepConfig) -> str:
    """Identity of a sweep's MLflow parent run: its name and recipe without its grid or search, so
    seeds, arms or axis values added to a sweep add child runs to the parent the user compares in,
    where a changed recipe starts a parent of its own."""
    d = _identity(cfg)
    d.pop("grid")
    d.pop("search", None)
    return stage_key("sweep-family", 1, d, {})


@dataclass(frozen=True)
class PlanRow:
    stage: str
    label: str
    key: str
    cached: bool


def plan(graph: SweepGraph, store: Store) -> list[PlanRow]:
    return [PlanRow(n.stage, n.label, n.key, store.is_done(n.stage, n.key)) for n in graph.build_order()]


def format_plan(rows: list[PlanRow]) -> str:
    width = max(len(r.label) for r in rows)
    lines = [f"{'stage':<10} {'what':<{width}} {'key':<16} status"]
    for r in rows:
        lines.append(f"{r.stage:<10} {r.label:<{width}} {r.key:<16} {'cached' if r.cached else 'to build'}")
    todo = sum(not r.cached for r in rows)
    lines.append(f"{len(rows)} stages: {len(rows) - todo} cached, {todo} to build")
    return "\n".join(lines)


def print_plan(cfg: SweepConfig, echo: Echo = print, gpus: int | None = None,
               without_profile: SweepConfig | None = None) -> None:
    """Every stage in build order with its key and status, the cells, what building costs, the
    makespan of its schedule (on `gpus` GPUs, else on this machine's lanes), and which keys the
    selected profile changes (against `without_profile`, the file without it)."""
    from cdray.sweep.estimate import estimate
    from cdray.sweep.footprint import footprint
    from cdray.sweep.preflight import check_data

    check_data(cfg, echo)
    graph, store = build_graph(cfg), open_store(cfg)
    rows = plan(graph, store)
    echo(format_plan(rows))
    if graph.babylm_note:
        echo(f"BabyLM evaluation skipped ({graph.babylm_note}): perplexity only")
    echo(search_summary(cfg) if cfg.search.samples_cells else cells_summary(graph.cells))
    todo = [n for n, r in zip(graph.build_order(), rows) if not r.cached]
    echo(estimate(graph, cfg, store, todo))
    if todo:
        from cdray.sweep.schedule import schedule_line

        lanes = max(1, min(cfg.ray.max_concurrent_cells, cfg.ray.num_cpus or 2))
        echo(schedule_line(graph, cfg, store, gpus or lanes, "GPUs" if gpus else "CPU lanes"))
    echo(footprint(graph, cfg, store, todo))
    if without_profile is not None:
        echo(profile_effect(cfg, graph, build_graph(without_profile)))


def profile_effect(cfg: SweepConfig, graph: SweepGraph, plain: SweepGraph) -> str:
    """One line: the stages whose keys the selected profile changes (it sets a keyed field, such
    as train.num_workers or train.use_gpu: the same runs computed another way), or that it changes none."""
    before = {n.label: n.key for n in plain.build_order()}
    changed = [n.label for n in graph.build_order() if before.get(n.label, n.key) != n.key]
    if not changed:
        return f"profile {cfg.profile!r}: every key as without it (it changes where the sweep runs, not what it computes)"
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return (f"profile {cfg.profile!r} changes the keys of {len(changed)} stages ({shown}): it sets fields "
            f"that are part of what they compute (train.num_workers, train.use_gpu, ...), so the store's "
            f"artifacts of the file without it are not reused")


def search_summary(cfg: SweepConfig) -> str:
    """What a search will draw, how ASHA stops cells, and that the estimate below leaves them out."""
    from cdray.config.search import RangeAxis
    from cdray.dag.points import axes

    shown = []
    for name, axis in axes(cfg).items():
        if isinstance(axis, RangeAxis):
            shown.append(f"{name} in [{axis.low:g}, {axis.high:g}]" + (" (log)" if axis.log else ""))
        else:
            shown.append(f"{name} in {{{', '.join(map(str, axis))}}}")
    s = cfg.search
    asha = (f"; ASHA stops a cell whose best milestone perplexity trails the best 1/{s.reduction_factor} "
            f"at a rung, never before step {cfg.asha_grace}" if s.scheduler == "asha" else "")
    return (f"cells: drawn as the sweep runs, {s.samples} by a {s.algorithm} search (seed {s.seed}) over "
            f"{'; '.join(shown)}{asha}. The estimate below is the shared work only: each drawn cell adds "
            f"one training run ({cfg.train.steps} steps) and its evaluations, less where ASHA stops it")


def cells_summary(cells, list_up_to: int = 8) -> str:
    """One line: every cell id for a small sweep, else its arms (with their q) and seeds."""
    if len(cells) <= list_up_to:
        return f"cells: {len(cells)} ({', '.join(c.id for c in cells)})"
    arms = dict.fromkeys(f"{c.label} q={c.q:g}" for c in cells)
    seeds = dict.fromkeys(c.seed for c in cells)
    return (f"cells: {len(cells)}: {len(arms)} arms ({', '.join(arms)}) "
            f"x {len(seeds)} seeds ({', '.join(map(str, seeds))})")
