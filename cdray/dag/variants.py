"""A sweep with axes over config fields (`grid.fields`) as one graph: each combination of the axes'
values expanded, the expansions merged by key, and each node and cell labelled with the axis values
that change it (an axis a node's key ignores is not in its label: the BASELINE of a sweep over a
decoding setting is one cell, not one per setting)."""
from __future__ import annotations

from typing import Any, Callable

from cdray.config import SweepConfig, from_dict
from cdray.config.axes import variants
from cdray.dag.nodes import Cell, SweepGraph, setting_label


def _keys_by_label(graph: SweepGraph) -> dict[str, str]:
    return {n.label: n.key for n in graph.nodes()}


def applying_axes(expansions: list[tuple[dict, dict[str, str]]], names: list[str]) -> dict[str, list[str]]:
    """For each node label, the axes its key follows: those two combinations differing only in
    that axis give the node different keys."""
    by_values = {tuple(values[n] for n in names): keys for values, keys in expansions}
    labels = set().union(*(keys for _, keys in expansions))
    out: dict[str, list[str]] = {label: [] for label in labels}
    for i, name in enumerate(names):
        for combo, keys in by_values.items():
            for other, other_keys in by_values.items():
                if other[:i] + other[i + 1:] != combo[:i] + combo[i + 1:] or other[i] == combo[i]:
                    continue
                for label in labels:
                    if keys.get(label) != other_keys.get(label) and name not in out[label]:
                        out[label].append(name)
    return {label: [n for n in names if n in axes] for label, axes in out.items()}


def merged_graph(cfg: SweepConfig, expand: Callable[..., SweepGraph]) -> SweepGraph:
    """One expansion (cdray.dag.graph.expand) per combination of grid.fields, merged: the GOOD and
    SMALL runs always train by the sweep's own recipe (an axis over train.* varies only the
    students' runs)."""
    combos = variants(cfg, from_dict)
    names = [a.name for a in cfg.grid.fields]
    plain = [(values, _keys_by_label(expand(vcfg, recipe=cfg.train))) for values, vcfg in combos]
    applies = applying_axes(plain, names)

    def tagger(values: dict[str, Any]):
        def tag(label: str) -> str:
            return setting_label([(n, values[n]) for n in applies.get(label, [])])
        return tag

    merged: SweepGraph | None = None
    seen_cells: set[str] = set()
    for values, vcfg in combos:
        graph = expand(vcfg, recipe=cfg.train, tag=tagger(values))
        if merged is None:
            merged = SweepGraph(cfg, graph.corpus, graph.tokenizer, graph.tokens_train, graph.tokens_eval,
                                graph.prompts, graph.good, tag=graph.tag, babylm_note=graph.babylm_note)
        _merge(merged, graph, seen_cells, values, applies)
    return merged


def _merge(merged: SweepGraph, graph: SweepGraph, seen_cells: set[str], values: dict, applies: dict) -> None:
    if all(g.key != graph.good.key for g in [merged.good, *merged.goods]):
        merged.goods.append(graph.good)
    for r, node in graph.smalls.items():
        merged.smalls.setdefault(r, node)
        merged.small_info.setdefault(r, graph.small_info[r])
    for name, gen in graph.generations.items():
        if any(n.key == gen.key for n in merged.generations.values()):
            continue
        labelled = gen.label.removeprefix("generate ")  # the arm's corpus with its axis values
        merged.generations[labelled] = gen
        merged.synthetic[labelled] = graph.synthetic[name]
        if name in graph.contamination:
            merged.contamination[labelled] = graph.contamination[name]
    for cell in graph.cells:
        if cell.evaluate.key in seen_cells:
            continue
        seen_cells.add(cell.evaluate.key)
        base = _base_label(cell)
        fields = tuple((n, values[n]) for n in applies.get(base, []))
        merged.cells.append(Cell(cell.arm, cell.q, cell.seed, cell.strategy, cell.amateur, cell.train,
                                 cell.evaluate, cell.babylm, fields))


def _base_label(cell: Cell) -> str:
    """The label the cell's evaluate node has without axis values (what applying_axes is keyed by)."""
    return f"evaluate {cell.arm} q={cell.q:g} seed={cell.seed}"


__all__ = ["merged_graph", "applying_axes"]
