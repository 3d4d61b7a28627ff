"""The schedule a sweep's DAG gets on N accelerators (or CPU lanes): each stage starts once its
inputs are built and a slot is free, at most ray.max_concurrent_cells cells at once (what the
readiness dispatch asks of Ray), against the serial upstream it replaced; with the critical path
and the total work, from the per-stage seconds cdray.sweep.estimate reckons."""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from cdray.config import SweepConfig
from cdray.dag.graph import SweepGraph
from cdray.dag.store import Store
from cdray.sweep import eval_cost
from cdray.sweep.estimate import STAGE_SECONDS, eval_split_tokens, non_embedding_params, reckon

ACCELERATED = ("train", "generate", "evaluate", "babylm")  # the stages that hold a GPU (or a lane)


@dataclass(frozen=True)
class Job:
    """A stage to build: its seconds, the slots it holds, its inputs, the cell it belongs to."""

    ident: tuple[str, str]
    seconds: float
    slots: int
    inputs: tuple[tuple[str, str], ...]
    cell: int | None


def jobs(graph: SweepGraph, cfg: SweepConfig, store: Store, slots: int) -> list[Job]:
    """The stages still to build, in the order the sweep submits them, each with its seconds."""
    order = graph.build_order()
    todo = [n for n in order if not store.is_done(n.stage, n.key)]
    if not todo:
        return []
    r = reckon(graph, cfg, store, todo)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    owner = {(n.stage, n.key): i for i, c in enumerate(graph.cells) for n in c.nodes()}
    shared = {(n.stage, n.key) for n in graph.upstream()}
    # a checkpoint's BabyLM tasks run in one Ray task: its seconds and its one start-up, shared by its stages
    n_babylm = r["kinds"]["babylm"]
    per_babylm = (r["babylm"] + STAGE_SECONDS * r["checkpoints"]) / n_babylm if n_babylm else 0.0
    built = {(n.stage, n.key) for n in todo}
    out = []
    for n in todo:
        ident = (n.stage, n.key)
        held = 1 if n.stage in ACCELERATED else 0
        if n.stage == "train":
            s = tokens * non_embedding_params(n.config["model"], cfg.tokenizer.vocab_size) / r["train_rate"]
        elif n.stage == "generate":
            held = max(1, min(cfg.generation.actors, slots))
            s = cfg.generation.token_budget * r["expert"] / (r["gen_rate"] * held)
        elif n.stage == "evaluate":
            split, _ = eval_split_tokens(cfg, store, n)
            s = eval_cost.perplexity_seconds(split, len(n.input("run").config["milestones"]),
                                             non_embedding_params(n.input("run").config["model"], cfg.tokenizer.vocab_size),
                                             r["eval_rate"])
        else:
            s = 0.0
        s = per_babylm if n.stage == "babylm" else s + STAGE_SECONDS
        inputs = tuple((d.stage, d.key) for _, d in n.inputs if (d.stage, d.key) in built)
        out.append(Job(ident, s, held, inputs, None if ident in shared else owner.get(ident)))
    return out


def critical_path(todo: list[Job]) -> float:
    """The longest chain of inputs (seconds): no schedule finishes sooner."""
    done: dict[tuple[str, str], float] = {}
    for j in todo:  # inputs come first in submission order
        done[j.ident] = j.seconds + max((done[i] for i in j.inputs), default=0.0)
    return max(done.values(), default=0.0)


def simulate(todo: list[Job], slots: int, max_cells: int, serial_upstream: bool = False) -> float:
    """Seconds until the last stage is built when each starts, in submission order, as soon as its
    inputs are built, its slots are free and (a cell's first stage) fewer than `max_cells` cells are
    running; `serial_upstream`: the shared stages one after another before any cell (the driver's
    loop this dispatch replaced)."""
    if serial_upstream:
        chained, last = [], None
        for j in todo:
            if j.cell is None:
                j = Job(j.ident, j.seconds, j.slots, j.inputs + ((last,) if last else ()), None)
                last = j.ident
            chained.append(j)
        gate = last
        todo = [j if j.cell is None or gate is None else Job(j.ident, j.seconds, j.slots, j.inputs + (gate,), j.cell)
                for j in chained]
    waiting = {i: len(set(j.inputs)) for i, j in enumerate(todo)}
    users: dict[tuple[str, str], list[int]] = {}
    for i, j in enumerate(todo):
        for d in set(j.inputs):
            users.setdefault(d, []).append(i)
    cell_left: dict[int, int] = {}
    for j in todo:
        if j.cell is not None:
            cell_left[j.cell] = cell_left.get(j.cell, 0) + 1
    ready = sorted(i for i, n in waiting.items() if n == 0)
    clock, free, running, events, end = 0.0, slots, set(), [], 0.0
    while ready or events:
        kept = []
        for i in ready:  # in submission order: start what fits
            j = todo[i]
            new_cell = j.cell is not None and j.cell not in running
            if j.slots > free or (new_cell and len(running) >= max_cells):
                kept.append(i)
                continue
            if new_cell:
                running.add(j.cell)
            free -= j.slots
            heapq.heappush(events, (clock + j.seconds, i))
        ready = kept
        if not events:
            raise ValueError("a stage needs more slots than there are, or an input that is never built")
        clock, i = heapq.heappop(events)
        end = clock
        j = todo[i]
        free += j.slots
        if j.cell is not None:
            cell_left[j.cell] -= 1
            if cell_left[j.cell] == 0:
                running.discard(j.cell)
        for u in users.get(j.ident, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
        ready.sort()
    return end


def schedule_line(graph: SweepGraph, cfg: SweepConfig, store: Store, slots: int, what: str) -> str:
    """One line: the makespan of the readiness schedule on `slots`, against max(critical path,
    total work / slots) and the serial upstream's makespan."""
    todo = jobs(graph, cfg, store, slots)
    if not todo:
        return ""
    from cdray.sweep.estimate import human_duration

    cells = max(1, cfg.ray.max_concurrent_cells)
    ready = simulate(todo, slots, cells)
    serial = simulate(todo, slots, cells, serial_upstream=True)
    path = critical_path(todo)
    work = sum(j.seconds * j.slots for j in todo)
    bound = max(path, work / slots)
    return (f"schedule on {slots} {what} (each stage as soon as its inputs are built, at most {cells} cells "
            f"at once): makespan about {human_duration(ready)}, {ready / bound:.2f}x max(critical path {human_duration(path)}, "
            f"total work {human_duration(work)} / {slots}); the shared stages one after another first: {human_duration(serial)}")
