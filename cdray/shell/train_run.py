"""A train node as a Ray Train run whose checkpoints are its milestones, in the store.

Ray Train's experiment folder is the artifact's own folder (`{store}/train/{key}`), so a milestone
reported as a checkpoint lands where readers find it: rank 0 writes it on its node, Ray uploads it
in a background thread while the steps go on (`checkpoint_upload_fn`: the files with their
checksums, `checksums.json` last), and a restarted worker group, on whatever nodes, resumes from
`ray.train.get_checkpoint()`: one checkpoint the controller hands every rank, downloaded by each
node for itself. A re-run driver builds the trainer with the same storage and name, and Ray's
checkpoint manager finds the run's newest committed checkpoint again. Resume state (optimizer,
RNG) is dropped from every committed milestone but the newest `train.keep_resume`; the driver
commits the manifest over the files where they are.
"""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import ray

from cdray.common import faults
from cdray.config import SweepConfig
from cdray.dag.execution import Execution
from cdray.dag.run_config import as_execution
from cdray.dag import builders
from cdray.dag.graph import Node
from cdray.dag.store import Store, StoreError, member
from cdray.models.checkpoints import LOGS, RESUME, has_resume_state, resume_to_prune, step_of
from cdray.shell.process_group import torch_config

# A sweep cell's Tune trial only drives its trainer and holds this much CPU; the work it starts
# (a training run's workers, a task) takes the rest of a core, so N concurrent cells fit on N cores
CELL_DRIVER_CPU = 0.01
WORK_CPU = 1 - CELL_DRIVER_CPU
CHECKSUMS = "checksums.json"  # a milestone's files with sizes and sha256, uploaded last
CHUNK = 8 << 20


def run_storage(store: Store) -> dict:
    """RunConfig storage of a training run: the store's `train/` folder (the run's name is its key)."""
    if store.remote is not None:
        return {"storage_path": store.remote.path("train"), "storage_filesystem": store.remote.fs}
    return {"storage_path": str(store.root / "train")}


def _join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


def _list(fs, path: str) -> dict[str, int]:
    """{relative name: size} of every file below `path` on a pyarrow filesystem."""
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return {i.path[len(path.rstrip("/")) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


class MilestoneUploader:
    """Ray Train's `checkpoint_upload_fn` on rank 0: a milestone's files into the run's folder,
    hashed as they are read, then `checksums.json`; one milestone at a time, so a newer one never
    overtakes an older one. Writes nothing when the milestone already is in the run's folder (a
    local store)."""

    def __init__(self, fs, run_path: str):
        self.fs, self.run_path = fs, run_path
        self._one_at_a_time = threading.Lock()
        self.seconds: list[float] = []

    def __call__(self, checkpoint, dir_name: str):
        import time

        from ray.train import Checkpoint

        started = time.perf_counter()
        src, dest = Path(checkpoint.path), _join(self.run_path, dir_name)
        with self._one_at_a_time:
            in_place = Path(dest).resolve() == src.resolve() if Path(dest).is_absolute() else False
            files = {}
            for p in sorted(q for q in src.rglob("*") if q.is_file()):
                rel = p.relative_to(src).as_posix()
                files[rel] = self._copy(p, None if in_place else _join(dest, rel))
            with self.fs.open_output_stream(_join(dest, CHECKSUMS), compression=None) as f:
                f.write(json.dumps(files, sort_keys=True).encode())
        self.seconds.append(time.perf_counter() - started)
        return Checkpoint(dest, filesystem=self.fs)

    def _copy(self, src: Path, dest: Optional[str]) -> dict:
        h, size = hashlib.sha256(), 0
        with open(src, "rb") as f:
            out = self.fs.open_output_stream(dest, compression=None) if dest is not None else None
            try:
                while block := f.read(CHUNK):
                    h.update(block)
                    size += len(block)
                    if out is not None:
                        out.write(block)
            finally:
                if out is not None:
                    out.close()
        return {"bytes": size, "sha256": h.hexdigest()}


def prune_committed(fs, run_path: str, keep: int) -> list[int]:
    """Drop the resume state of every milestone Ray Train has committed but the newest `keep`
    (blocks until the reports in flight are committed: at most the upload of one milestone)."""
    from ray.train import CheckpointConsistencyMode, get_all_reported_checkpoints

    committed = [step_of(Path(c.checkpoint.path).name)
                 for c in get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)]
    pruned = resume_to_prune([s for s in committed if s is not None], keep)
    for step in pruned:
        resume_dir = _join(run_path, f"step_{step:06d}/{RESUME}")
        if _exists(fs, resume_dir):
            fs.delete_dir(resume_dir)
    return pruned


def _exists(fs, path: str) -> bool:
    from pyarrow import fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _local_milestone(checkpoint, store: Store, key: str, out: Path) -> Optional[Path]:
    """The milestone a restarted worker group was handed, as a folder on this node: the run's own
    folder for a local store, else downloaded (checksums verified) into this node's cache once
    per node, whichever rank gets there first."""
    if checkpoint is None:
        return None
    name = Path(checkpoint.path).name
    if store.remote is None:
        return Path(checkpoint.path)
    local = out / name
    with store.lock("train", key):
        if (local / "trainer_state.json").is_file() and has_resume_state(local):
            return local
        fs = checkpoint.filesystem
        sums = json.loads(fs.open_input_file(_join(checkpoint.path, CHECKSUMS)).read())
        for rel, size in _list(fs, checkpoint.path).items():
            if rel == CHECKSUMS:
                continue
            meta = sums.get(rel)
            if meta is None or meta["bytes"] != size:
                raise StoreError(f"{_join(checkpoint.path, rel)}: not as its checksums.json records it")
            path = member(local, rel, checkpoint.path)
            _download(fs, _join(checkpoint.path, rel), path, meta["sha256"])
    return local


def _download(fs, src: str, dest: Path, sha256: str) -> None:
    from cdray.common.files import temporary_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, h = temporary_path(dest), hashlib.sha256()
    try:
        with fs.open_input_stream(src, compression=None) as f, open(tmp, "wb") as out:
            while block := f.read(CHUNK):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha256:
            raise StoreError(f"{src}: checksum mismatch (the stored milestone is corrupt)")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _train_loop(config: dict) -> dict:
    import ray.train
    import torch
    from ray.train import Checkpoint, CheckpointUploadMode

    from cdray.models.training import train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    faults.hold_seconds("train")  # the schedule benchmark's set length (nothing unless asked)
    # a remote store's address arrives by object reference: Ray records a train loop config in
    # its run state, and the address may carry credentials
    store = Store.at(*ray.get(config["store"]))
    for stage_name, key in config["fetch"]:  # inputs into this node's cache (a no-op for a local store)
        store.fetch(stage_name, key)
    key = config["key"]
    out = store.dir("train", key)  # this node's: the run's folder itself for a local store
    storage = ctx.get_storage()
    run_path, fs = storage.experiment_fs_path, storage.storage_filesystem
    uploader = MilestoneUploader(fs, run_path)
    device = str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu"
    if not config["use_gpu"]:
        torch.set_num_threads(config["threads"])
    resume_from = _local_milestone(ray.train.get_checkpoint(), store, key, out)

    def report(record: dict) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        checkpoint = None
        if rank == 0 and record.get("checkpoint"):
            # off the step loop: it waits for Ray Train to commit the reports before it
            pruning.append(pruner.submit(prune_committed, fs, run_path, config["keep_resume"]))
            checkpoint = Checkpoint.from_directory(record["checkpoint"])
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{record['step']:06d}",
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC, checkpoint_upload_fn=uploader,
                         delete_local_checkpoint_after_upload=store.remote is not None)

    pruner, pruning = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdray-prune"), []
    try:
        result = train(config["job"], out, rank=rank, world_size=ctx.get_world_size(), device=device,
                       report=report, resume_from=resume_from, keep_resume=None)
    except BaseException:
        pruner.shutdown(wait=False, cancel_futures=True)  # a failed run commits nothing more to wait for
        raise
    pruner.shutdown(wait=True)
    for done in pruning:
        done.result()  # a failed deletion is the run's error, not a silent leftover
    if rank == 0:
        prune_committed(fs, run_path, config["keep_resume"])  # waits for the last upload too
        if store.remote is not None:
            for name in LOGS:
                if (out / name).is_file():
                    uploader._copy(out / name, _join(run_path, name))
        result["upload_seconds"] = uploader.seconds
    return result


def run_files(store: Store, key: str) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} of a finished run's files where they live: every
    milestone's files (their checksums from its checksums.json) and the run's logs; Ray Train's
    own state files in the folder are not the artifact's."""
    if store.remote is not None:
        fs, path = store.remote.fs, store.remote.path(f"train/{key}")
    else:
        from pyarrow import fs as pafs

        fs, path = pafs.LocalFileSystem(), str(store.dir("train", key))
    listed = _list(fs, path)
    sums: dict[str, dict] = {}
    for rel in listed:
        if rel.endswith(f"/{CHECKSUMS}") and step_of(rel.split("/", 1)[0]) is not None:
            step = rel.split("/", 1)[0]
            sums.update({f"{step}/{r}": m for r, m in json.loads(fs.open_input_file(_join(path, rel)).read()).items()})
    files = {}
    for rel, size in listed.items():
        top = rel.split("/", 1)[0]
        if rel in LOGS or rel.endswith(f"/{CHECKSUMS}"):
            data = fs.open_input_file(_join(path, rel)).read()
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        elif step_of(top) is not None and rel in sums and sums[rel]["bytes"] == size:
            files[rel] = sums[rel]
    return files


def fit_training(node: Node, run: SweepConfig | Execution, store: Store, out: Path,
                 callbacks: tuple = ()) -> tuple[dict, dict]:
    """Run a train node as a Ray Train TorchTrainer (gloo on CPU, nccl on GPU); returns its stats
    and files. Whether Ray restarted the worker group (a lost node, FailureConfig) or the whole
    driver was re-run, training resumes from the run's newest committed milestone."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ex = as_execution(run)
    recipe = ex.recipe(node.config["recipe"])
    fetch = [(n.stage, n.key) for _, n in node.inputs] if store.remote is not None else []
    resources = None if recipe.use_gpu else {"CPU": recipe.torch_threads - CELL_DRIVER_CPU}
    trainer = TorchTrainer(
        _train_loop,
        # the job's input paths are where every node's cache keeps them: the workers fetch them
        train_loop_config={"job": builders.train_job(node, ex, store, fetch=store.remote is None), "key": node.key,
                           "use_gpu": recipe.use_gpu, "threads": recipe.torch_threads,
                           "keep_resume": recipe.keep_resume,
                           "store": ray.put((store.location, str(store.root) if store.remote else None)),
                           "fetch": fetch},
        torch_config=torch_config("nccl" if recipe.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=recipe.num_workers, use_gpu=recipe.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=node.key, **run_storage(store), callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=3),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    stats = dict(result.return_value)
    files = run_files(store, node.key)
    missing = [s for s in (m["step"] for m in stats.get("milestones", []))
               if f"step_{s:06d}/trainer_state.json" not in files]
    if missing:
        raise StoreError(f"train {node.label}: milestone {missing[0]} is not in the store")
    return stats, files


__all__ = ["run_storage", "MilestoneUploader", "prune_committed", "run_files", "fit_training"]
