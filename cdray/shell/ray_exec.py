"""Ray shell around the stages: Ray Train for training, Ray Data for generation, tasks for the rest."""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import ray

from cdray.common import console
from cdray.common.signals import sigterm_interrupts
from cdray.config import ConfigError, RayConfig, SweepConfig
from cdray.dag import builders
from cdray.dag.execution import Execution
from cdray.dag.run_config import as_execution
from cdray.dag.graph import Node
from cdray.dag.stages import stage
from cdray.dag.store import Store
from cdray.eval.device import task_gpus
from cdray.shell.local_cluster import SINGLE_HOST_ENV, cluster_address, in_job, is_loopback
from cdray.shell.train_run import WORK_CPU, fit_training

# progress bars of every model load in every worker drown the sweep's own progress lines
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TOKENIZERS_PARALLELISM": "false"}


# forwarded to the workers of a cluster cdray attaches to (outside a job, whose runtime_env rules)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "CDRAY_CACHE")


def init_ray(rcfg: RayConfig) -> None:
    """Attach to ray.address / $RAY_ADDRESS if given, else start a local cluster."""
    if ray.is_initialized():
        return
    try:
        _init_ray(rcfg)
    finally:
        sigterm_interrupts()  # Ray's own handler aborts the driver and orphans a local cluster


def _init_ray(rcfg: RayConfig) -> None:
    address = cluster_address(rcfg)
    if in_job():
        # inside `ray job submit`: the job's runtime_env (working_dir, env_vars) already applies
        ray.init(address=address or "auto", log_to_driver=rcfg.log_to_driver)
        return
    # workers of a local cluster must import cdray from this checkout even if it is not installed
    root = str(Path(__file__).resolve().parents[2])
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
                        **QUIET_ENV}}
    if address:
        probe_address(address, "ray.address" if rcfg.address else None)
        forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(address=address, log_to_driver=rcfg.log_to_driver,
                 runtime_env={"env_vars": {**QUIET_ENV, **forwarded}})
    else:
        ray.init(address="local", num_cpus=rcfg.num_cpus, include_dashboard=False,
                 runtime_env=env, log_to_driver=rcfg.log_to_driver)
        ip = ray.util.get_node_ip_address()
        if not is_loopback(ip):
            console.say(f"[cdray] warning: this local Ray cluster listens on {ip} and every other interface: "
                        f"ray was imported before cdray could keep it on loopback "
                        f"(set {SINGLE_HOST_ENV}=0 before importing ray)")


def probe_address(address: str, field: Optional[str], timeout: float = 5.0) -> None:
    """Fail in seconds, naming where the address came from (`field`, else $RAY_ADDRESS), when
    nothing listens at a host:port (or ray://host[:port]) cluster address: ray.init would
    retry it for minutes. Other forms ("auto") are left to ray.init, which fails fast."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "ray"):
        return
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = rest, "10001" if scheme == "ray" else ""
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        message = f"no Ray cluster answers at {address} ({e.strerror or e})"
        if field:
            raise ConfigError(field, message) from None
        raise ConnectionError(f"$RAY_ADDRESS: {message}") from None




def open_store(run: SweepConfig | Execution) -> Store:
    ex = as_execution(run)
    return Store.at(ex.store_root, ex.store_cache)


def store_address(store: Store) -> tuple:
    """What opens this store again on another node: its location and, for a remote store, the
    cache path (the same path on every node of a cluster, each node's own disk)."""
    return store.location, str(store.root) if store.remote is not None else None


def ray_storage(store: Store, name: str) -> dict:
    """RunConfig storage of Ray Train / Tune: beside the artifacts, on the remote fs if remote
    (a multi-node cluster needs shared storage: head-node syncing is gone)."""
    if store.remote is not None:
        return {"storage_path": store.remote.path(name), "storage_filesystem": store.remote.fs}
    return {"storage_path": str(store.root / name)}


@ray.remote(num_cpus=WORK_CPU)
def _build_task(node: Node, ex: Execution) -> dict:
    import torch

    torch.set_num_threads(1)
    return builders.build(node, ex, open_store(ex))


def build_node(node: Node, run: SweepConfig | Execution, store: Store, *, run_id: Optional[str] = None,
               callbacks: tuple = (), progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Get-or-build a node on the executor its stage runs on (cdray.dag.stages): Ray Train, a Ray
    Data actor pool (progress: its figures as each shard commits, builders.build_generate), or a
    task; a checkpoint's BabyLM tasks go through build_nodes."""
    if store.is_done(node.stage, node.key):
        return store.manifest(node.stage, node.key)
    ex = as_execution(run)
    runs_on = stage(node.stage).runs_on
    if runs_on == "train":
        builder = partial(fit_training, callbacks=callbacks)
        return builders.build(node, ex, store, builder=builder, extra={"mlflow_run_id": run_id}, in_place=True)
    if runs_on == "data":
        builder = partial(builders.build_generate, progress=progress,
                          execute=partial(generate_with_ray_data, store=store, node=node))
        return builders.build(node, ex, store, builder=builder)
    if runs_on == "checkpoint":
        return build_nodes([node], ex, store)[0]
    # inside a Tune trial, tasks would inherit the trial's 0.01-CPU placement group: escape it
    return ray.get(_build_task.options(scheduling_strategy=outside_trial(),
                                       num_gpus=task_gpus(node.stage, ex.use_gpu)).remote(node, ex))


def outside_trial():
    """A task's placement outside any placement group (a trial's is sized for its driver only)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=None)


@ray.remote(num_cpus=WORK_CPU)
def _build_babylm_group_task(nodes: list, ex: Execution) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    return builders.build_babylm_group(nodes, ex, open_store(ex))


def build_nodes(nodes, run: SweepConfig | Execution, store: Store) -> list[dict]:
    """Get-or-build a cell's evaluation nodes: one Ray task per checkpoint, which loads it once and
    scores every task of it in one process; checkpoints in parallel."""
    groups: dict[tuple, list[Node]] = {}
    for node in nodes:
        if not store.is_done(node.stage, node.key):
            groups.setdefault(builders.checkpoint_of(node), []).append(node)
    ex = as_execution(run)
    gpus = task_gpus("babylm", ex.use_gpu)
    refs = [_build_babylm_group_task.options(scheduling_strategy=outside_trial(), num_gpus=gpus).remote(g, ex)
            for g in groups.values()]
    built = {n.key: m for g, ms in zip(groups.values(), ray.get(refs)) for n, m in zip(g, ms)}
    return [built.get(n.key) or store.manifest(n.stage, n.key) for n in nodes]


class _StoreShardGenerator:
    """ShardGenerator for a remote store: fetches the models into this node's cache first and
    uploads each committed shard (its manifest last, by write order) for the driver to pull."""

    def __init__(self, *, store: tuple, fetch: list, push: tuple, **kwargs):
        from cdray.decode.synthetic import ShardGenerator

        self.store = Store.at(*store)
        for stage_name, key in fetch:
            self.store.fetch(stage_name, key)
        self.push = push
        self.gen = ShardGenerator(**kwargs)
        self.pushing = threading.Lock()  # calls run in several threads (shards_per_actor)

    def __call__(self, batch):
        out = self.gen(batch)
        with self.pushing:
            self.store.push(*self.push)
        return out


def generate_with_ray_data(kwargs: dict, shards: list[dict],
                           enough: Optional[Callable[[dict], bool]] = None, *,
                           store: Optional[Store] = None, node: Optional[Node] = None) -> None:
    """Run generation shards in order on a Ray Data actor pool (each actor holds both models; the
    pool as kwargs["generation"] sizes it); with `enough`, stop the pool once enough(counts) of a
    committed shard is True (counts: the ShardGenerator's output row)."""
    from cdray.decode.synthetic import ShardGenerator, shards_per_actor

    gen = kwargs["generation"]
    calls = shards_per_actor(gen.batch_size, gen.shard_prompts * gen.continuations)
    remote = store is not None and store.remote is not None
    callable_cls = ShardGenerator
    if remote:
        callable_cls = _StoreShardGenerator
        kwargs = {**kwargs, "store": store_address(store),
                  "push": (node.stage, node.key, store.attempt(node.stage, node.key)),
                  "fetch": [(n.stage, n.key) for _, n in node.inputs]}
    # one block per shard, so the pool can hand shards to several actors (set at creation: a
    # repartition would add an all-to-all stage before the first shard starts)
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    actors = max(1, min(gen.actors, len(shards)))
    resources = {"num_cpus": gen.actor_cpus}
    if gen.actor_gpus:
        resources["num_gpus"] = gen.actor_gpus
    out = ds.map_batches(
        callable_cls,
        fn_constructor_kwargs={**kwargs, "torch_threads": max(1, int(gen.actor_cpus)),
                               "device": "cuda" if gen.actor_gpus else "cpu"},
        batch_size=1,
        # start every actor at once and hand each one `calls` shards at a time (two, or more
        # when a shard holds less than a batch), run at once in threads that share the actor's
        # decode batch: as one shard's last rows run, the next one's fill the slots they leave
        # (a shard's tail does not drain the batch). Shards spread over the whole pool
        # instead of queueing behind the first actor, go out in prompt order, and a stop at the
        # budget leaves at most `calls` unneeded shards per actor in flight
        compute=ray.data.ActorPoolStrategy(
            min_size=min(max(1, gen.min_actors), actors), max_size=actors, initial_size=actors,
            max_tasks_in_flight_per_actor=calls, max_concurrent_calls_per_actor=calls,
            enable_true_multi_threading=True),
        **resources,
    )
    # the pool grows (back, after shrinking idle) once every thread of its actors is busy: Ray
    # Data's default waits for 175% (queued calls), which its calls per actor never reach, and
    # warns that such a pool cannot scale up. Set on this dataset's own copy of the context
    out.context.autoscaling_config = dataclasses.replace(
        out.context.autoscaling_config,
        actor_pool_util_upscaling_threshold=min(
            1.0, out.context.autoscaling_config.actor_pool_util_upscaling_threshold))
    if enough is None:
        out.materialize()
    else:
        rows = iter(out.iter_rows())
        try:
            for row in rows:
                if enough({k: int(v) for k, v in row.items()}):
                    break
        finally:
            # closing the stream shuts the pool down now: shards in flight past the budget are
            # not needed (one killed mid-shard has committed nothing)
            close = getattr(rows, "close", None)
            if close is not None:
                close()
    if remote:
        store.pull(node.stage, node.key)  # shards committed by actors on other nodes
