"""The sweep's DAG dispatched by readiness: one Ray task per node key, submitted with its inputs'
tasks as arguments, so Ray starts it once every input is built and as the cluster's resources
allow; a build asked for twice (two cells needing one corpus, a trial asking for a node no plan
listed) is one task. The store stays the source of truth: a node already built returns at once,
and a driver killed and run again asks the store before it submits anything."""
from __future__ import annotations

from typing import Optional

import ray

from cdray.dag import builders
from cdray.dag.execution import Execution
from cdray.dag.nodes import Node
from cdray.dag.stages import stage
from cdray.dag.store import Store
from cdray.shell.ray_exec import build_node, open_store, outside_trial
from cdray.shell.train_run import CELL_DRIVER_CPU, WORK_CPU


@ray.remote(max_retries=3)
def _build(node: Node, ex: Execution, tracking, run_id: Optional[str], *inputs_done) -> dict:
    """Build one node here: a plain stage in this task, a training run or a generation pool driven
    from it (their workers and actors hold the real resources); a generate stage's progress goes
    to the sweep's MLflow run as its shards commit."""
    import torch

    from cdray.common import console
    from cdray.sweep.cell_runs import live_metrics
    from cdray.tracking.runs import Tracker

    torch.set_num_threads(1)
    store = open_store(ex)
    if stage(node.stage).runs_on == "task":
        return builders.build(node, ex, store)
    progress = live_metrics(Tracker(tracking), run_id, node, console.say) if node.stage == "generate" else None
    return build_node(node, ex, store, run_id=run_id, progress=progress)


def cpus(node: Node) -> float:
    """What a node's task asks Ray for: a core for a plain stage; next to nothing for a stage whose
    Ray Train workers or Ray Data actors ask for their own."""
    return WORK_CPU if stage(node.stage).runs_on == "task" else CELL_DRIVER_CPU


@ray.remote(num_cpus=0)
class Builds:
    """Every build of one sweep in flight, by key: ensure(node) submits a node (and, first, its
    inputs) once, and hands every caller the same task's reference."""

    def __init__(self, ex: Execution, tracking, run_id: Optional[str] = None):
        self.ex, self.tracking, self.run_id = ex, tracking, run_id
        self.store = open_store(ex)
        self.refs: dict[tuple[str, str], ray.ObjectRef] = {}

    def ensure(self, node: Node) -> list:
        """[the reference of the task building node] (a list: a bare reference would be awaited)."""
        ident = (node.stage, node.key)
        if ident not in self.refs:
            inputs = [self.ensure(dep)[0] for _, dep in node.inputs
                      if not self.store.is_done(dep.stage, dep.key)]
            self.refs[ident] = _build.options(num_cpus=cpus(node), scheduling_strategy=outside_trial()).remote(
                node, self.ex, self.tracking, self.run_id, *inputs)
        return [self.refs[ident]]

    def in_flight(self) -> int:
        return len(self.refs)


def builds_name(sweep_key: str) -> str:
    return f"cdray-builds-{sweep_key}"


def start_builds(ex: Execution, tracking, sweep_key: str, run_id: Optional[str]):
    """The sweep's build registry (an actor the driver owns: it ends with the driver; one an earlier
    run from this process left, after a failure, is replaced). It lives on the driver's node: it owns
    every build's reference, and its node's loss would fail every build in flight (OwnerDiedError),
    where a worker node's loss only retries the tasks that ran there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.kill(ray.get_actor(builds_name(sweep_key)))
    except ValueError:
        pass
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Builds.options(name=builds_name(sweep_key), scheduling_strategy=here).remote(ex, tracking, run_id)


def ensure(node: Node, builds, store: Store) -> dict:
    """node's manifest once it is built (by this sweep's registry: one build however many ask)."""
    if store.is_done(node.stage, node.key):
        return store.manifest(node.stage, node.key)
    return ray.get(ray.get(builds.ensure.remote(node))[0])
