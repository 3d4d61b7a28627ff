"""The sweep DAG's data: stage nodes with content keys, the amateurs and arms, cells of the grid, and
the graph that holds them (its shared upstream work and its build order)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Optional

from cdray.config import SweepConfig
from cdray.dag.keys import stage_key
from cdray.dag.stages import stage


@dataclass(frozen=True, eq=False)
class Node:
    """One stage execution: its config slice and its input nodes determine its key."""

    stage: str
    config: dict
    inputs: tuple[tuple[str, "Node"], ...] = ()
    label: str = ""

    def __post_init__(self):
        unknown = [n for n, _ in self.inputs if n not in stage(self.stage).inputs]
        if unknown:
            raise ValueError(f"{self.label or self.stage}: stage {self.stage!r} reads no input {unknown[0]!r}")

    @cached_property
    def key(self) -> str:
        return stage_key(self.stage, stage(self.stage).version, self.config, self.input_keys)

    @property
    def input_keys(self) -> dict[str, str]:
        return {name: node.key for name, node in self.inputs}

    def input(self, name: str) -> "Node":
        for n, node in self.inputs:
            if n == name:
                return node
        raise KeyError(f"{self.label}: no input {name!r}")

    def has_input(self, name: str) -> bool:
        return any(n == name for n, _ in self.inputs)

    def walk(self) -> Iterator["Node"]:
        """Every ancestor, then self (inputs first)."""
        for _, node in self.inputs:
            yield from node.walk()
        yield self


@dataclass(frozen=True)
class Amateur:
    """The BAD model of a contrastive arm."""

    kind: str  # "early" | "small" | "dropout"
    value: float  # k, r or p

    @property
    def label(self) -> str:
        tag = {"early": "EARLY", "small": "SMALL", "dropout": "DROP"}[self.kind]
        return f"{tag}-{self.value:g}"


STRATEGY_LABELS = {
    "no_contrast": "NO-CONTRAST",
    "no_contrast_vhead": "NO-CONTRAST+VHEAD",
    "contrastive": "CD",
    "contrastive_tail": "CD-TAIL",
}


def arm_name(strategy: Optional[str], amateur: Optional[Amateur], q: float) -> str:
    if q == 0:
        return "BASELINE"
    base = STRATEGY_LABELS[strategy or "no_contrast"]
    return f"{base}-{amateur.label}" if amateur else base


@dataclass(frozen=True, eq=False)
class Cell:
    """One trained-and-evaluated model of the sweep: (arm, q, seed)."""

    arm: str
    q: float
    seed: int
    strategy: Optional[str]
    amateur: Optional[Amateur]
    train: Node
    evaluate: Node
    babylm: tuple[Node, ...] = ()  # one node per (milestone, BabyLM / lm-eval task)
    # the values of the grid.fields axes that change this cell (e.g. its students' weight decay)
    fields: tuple[tuple[str, Any], ...] = ()

    @property
    def setting(self) -> str:
        """The cell's axis values as a short label ("" without axes): `weight_decay=1`."""
        return setting_label(self.fields)

    @property
    def label(self) -> str:
        """The arm with its axis values: what the arm table and the report show."""
        return f"{self.arm} {self.setting}".strip()

    @property
    def id(self) -> str:
        base = f"{self.arm}|q={self.q:g}|seed={self.seed}"
        return f"{base}|{self.setting}" if self.fields else base

    def nodes(self) -> tuple[Node, ...]:
        """The cell's own work in build order: its training run, then its evaluations."""
        return (self.train, self.evaluate, *self.babylm)

    def params(self) -> dict:
        a = self.amateur
        return {
            "arm": self.arm, "q": self.q, "seed": self.seed, "strategy": self.strategy or "none",
            "amateur": a.label if a else "none",
            "k": a.value if a and a.kind == "early" else None,
            "r": a.value if a and a.kind == "small" else None,
            "p": a.value if a and a.kind == "dropout" else None,
            **{name: value for name, value in self.fields},
        }


def baselines(cells) -> dict[str, str]:
    """Each cell's label mapped to its BASELINE's: the BASELINE cell trained with the most of the
    cell's grid.fields values (all those that apply to a BASELINE), else the plain "BASELINE"."""
    plain = [c for c in cells if c.arm == "BASELINE"]
    out = {}
    for cell in cells:
        mine = set(cell.fields)
        fits = [b for b in plain if set(b.fields) <= mine]
        out[cell.label] = max(fits, key=lambda b: len(b.fields)).label if fits else "BASELINE"
    return out


def setting_label(fields) -> str:
    """Axis values as `leaf=value` (the whole dotted name where two axes share a leaf); a section's
    value as the fields it sets (`top_k=50`)."""
    leaves = [name.rsplit(".", 1)[-1] for name, _ in fields]
    return " ".join(str(value) if isinstance(value, dict) else f"{leaf if leaves.count(leaf) == 1 else name}={value}"
                    for (name, value), leaf in zip(fields, leaves))


@dataclass
class SweepGraph:
    """Every node of a sweep, shared upstream work appearing once."""

    cfg: SweepConfig
    corpus: Node
    tokenizer: Node
    tokens_train: Node
    tokens_eval: Node
    prompts: Node
    good: Node
    goods: list[Node] = field(default_factory=list)  # one per value of an expert.* axis
    smalls: dict[float, Node] = field(default_factory=dict)
    small_info: dict[float, dict] = field(default_factory=dict)
    generations: dict[str, Node] = field(default_factory=dict)  # by corpus label
    synthetic: dict[str, Node] = field(default_factory=dict)
    contamination: dict[str, Node] = field(default_factory=dict)  # by corpus label
    cells: list[Cell] = field(default_factory=list)
    tag: Callable[[str], str] = lambda label: label  # a node's label with its axis values
    babylm_note: Optional[str] = None  # why BabyLM tasks are not evaluated, when they are not

    def nodes(self) -> list[Node]:
        """All nodes, inputs before users, each key once."""
        seen: dict[tuple[str, str], Node] = {}
        # prompts before the GOOD: a seed split too small for the budget fails before training
        roots = [self.prompts, self.good, *self.goods, *self.smalls.values(), *self.synthetic.values(),
                 *self.contamination.values()]
        roots += [n for c in self.cells for n in c.nodes()]
        for root in roots:
            for node in root.walk():
                seen.setdefault((node.stage, node.key), node)
        return list(seen.values())

    def upstream(self) -> list[Node]:
        """What must be built before any cell starts, inputs first: every node that is no cell's
        own, and every cell node that something outside its cell reads, with all it needs.

        A cell's own train run is shared work when its key is also the GOOD's or a SMALL's (the
        q=0 BASELINE of the GOOD's seed and shape *is* the GOOD): generation reads it, so it
        cannot wait for its cell."""
        owners: dict[tuple[str, str], set[int]] = {}
        for i, cell in enumerate(self.cells):
            for node in cell.nodes():
                owners.setdefault(_ident(node), set()).add(i)
        shared: set[tuple[str, str]] = set()
        for node in self.nodes():
            own = owners.get(_ident(node))
            if own is None or len(own) > 1:
                shared.add(_ident(node))
            for _, dep in node.inputs:
                if owners.get(_ident(dep)) not in (None, own):
                    shared.add(_ident(dep))
        needed = {_ident(a) for n in self.nodes() if _ident(n) in shared for a in n.walk()}
        return [n for n in self.nodes() if _ident(n) in needed]


    def build_order(self) -> list[Node]:
        """Every node in the order a sweep builds it: upstream(), then each cell's own work."""
        order = self.upstream()
        first = {_ident(n) for n in order}
        for cell in self.cells:
            for node in cell.nodes():
                if _ident(node) not in first:
                    first.add(_ident(node))
                    order.append(node)
        return order


def _ident(node: Node) -> tuple[str, str]:
    return node.stage, node.key
