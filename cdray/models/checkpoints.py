"""A training run's files on disk: pickle-free milestones (weights kept, resume state only on the
newest), resuming from them, and the jsonl logs.

A milestone `step_NNNNNN/` holds `model/` (its weights, what evaluation and generation read) and
`trainer_state.json` (written last: the milestone is complete once it exists and the files it
records have their sizes). Its `resume/` folder holds what resuming exactly needs: the optimizer,
RNG and scheduler state, fp32 master weights when `model/` is saved in bf16, and the run's logs up to
that step, with `resume/state.json` written last. Only the newest milestones keep `resume/`
(`prune_resume`): three times the weights a milestone otherwise.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file, save_file

from cdray.common.files import file_sha256, fsync_dir, fsync_file, write_json_atomic
from cdray.models.llama import save_model

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
STATE = "trainer_state.json"
RESUME = "resume"
RESUME_STATE = "state.json"
LOGS = ("metrics.jsonl", "milestones.jsonl")
SAVE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- step dirs


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step_{step:06d}"


def step_of(name: str) -> Optional[int]:
    """The step of a milestone folder's name, or None for any other name."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def _files(d: Path, exclude: Iterable[str] = ()) -> dict[str, int]:
    skip = set(exclude)
    return {rel: p.stat().st_size for p in sorted(d.rglob("*"))
            if p.is_file() and (rel := p.relative_to(d).as_posix()) not in skip}


def _sizes_hold(d: Path, marker: str) -> bool:
    """Whether `marker` (a JSON file under d) exists and every file it records has its size
    (a power cut can leave a marker beside empty data files on a disk that reorders writes)."""
    try:
        recorded = json.loads((d / marker).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError):
        return False
    if recorded is None:  # written before markers recorded their files
        return True
    have = _files(d)
    return all(have.get(rel) == size for rel, size in recorded.items())


def complete_checkpoints(out_dir: Path, max_step: int | None = None) -> list[tuple[int, Path]]:
    """(step, dir) of every complete milestone (its weights whole), in step order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for d in out_dir.iterdir():
        step = step_of(d.name)
        if step is not None and (max_step is None or step <= max_step) and _sizes_hold(d, STATE):
            found.append((step, d))
    return sorted(found)


def has_resume_state(d: Path) -> bool:
    """Whether milestone dir d can be resumed from exactly (its resume state is whole)."""
    if (d / RESUME / RESUME_STATE).is_file():
        return _sizes_hold(d / RESUME, RESUME_STATE)
    return (d / "optimizer.safetensors").is_file()  # the layout before resume/ existed


def latest_checkpoint(out_dir: Path, max_step: int | None = None) -> Path | None:
    """The newest complete milestone (up to max_step) that keeps its resume state, or None."""
    found = [d for _, d in complete_checkpoints(out_dir, max_step) if has_resume_state(d)]
    return found[-1] if found else None


def resume_to_prune(steps: Iterable[int], keep: int) -> list[int]:
    """The milestones whose resume state goes once a newer one is safe: all but the newest `keep`."""
    ordered = sorted(set(steps))
    return ordered[:-keep] if keep >= 1 else ordered


def prune_resume(out_dir: Path, keep: int) -> list[int]:
    """Delete the resume state of every local milestone but the newest `keep` that have one."""
    with_state = [step for step, d in complete_checkpoints(out_dir) if (d / RESUME).is_dir()]
    pruned = resume_to_prune(with_state, keep)
    for step in pruned:
        shutil.rmtree(step_dir(out_dir, step) / RESUME, ignore_errors=True)
    return pruned


def step_checksums(d: Path) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} of every file of a milestone dir."""
    return {rel: {"bytes": size, "sha256": file_sha256(d / rel)} for rel, size in _files(d).items()}


# ---------------------------------------------------------------- checkpoints (no pickle)


def _json_scalar(v):
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def _optimizer_tensors(opt) -> tuple[dict, dict]:
    """Every AdamW state tensor as state.<param index>.<key>, plus per-param step values."""
    tensors, steps = {}, {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = val.detach().cpu().contiguous()
            if key == "step":
                steps[str(idx)] = _json_scalar(val)
    return tensors, steps


def _fsync_tree(d: Path) -> None:
    for f in d.rglob("*"):
        if f.is_file():
            fsync_file(f)
    for folder in {d, *(f.parent for f in d.rglob("*"))}:
        fsync_dir(folder)


def write_checkpoint(d: Path, model, opt, sched, state: dict, device: str, *, save_dtype: str = "fp32",
                     logs_from: Optional[Path] = None) -> None:
    """Weights, then the resume state (optimizer, RNG, scheduler, master weights when the weights
    are saved in bf16, the logs of `logs_from` so far) closed by resume/state.json, then
    trainer_state.json last: its presence marks the milestone complete. Each marker records its
    files' sizes, and the files reach the disk before it, so a reordering disk is caught on resume."""
    if d.exists():
        shutil.rmtree(d)  # a half-written dir from a crash
    d.mkdir(parents=True)
    save_model(model, d / "model", SAVE_DTYPES[save_dtype])
    r = d / RESUME
    r.mkdir()
    tensors, steps = _optimizer_tensors(opt)
    save_file(tensors, str(r / "optimizer.safetensors"))
    if SAVE_DTYPES[save_dtype] is not None:
        inner = getattr(model, "module", model)
        save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()},
                  str(r / "master.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(torch.device(device))
    save_file(rng, str(r / "rng.safetensors"))
    for name in LOGS if logs_from is not None else ():
        if (Path(logs_from) / name).is_file():
            shutil.copyfile(Path(logs_from) / name, r / name)
    _fsync_tree(d)
    groups = [{k: _json_scalar(v) for k, v in g.items() if k != "params"}
              for g in opt.state_dict()["param_groups"]]
    names = [n for n, _ in _unwrap_named(model)]
    write_json_atomic(r / RESUME_STATE, {"step": state["step"], "param_groups": groups, "param_steps": steps,
                                         "scheduler": sched.state_dict(), "param_names": names,
                                         "files": _files(r)})
    model_files = {f"model/{rel}": size for rel, size in _files(d / "model").items()}
    write_json_atomic(d / STATE, dict(state, save_dtype=save_dtype, files=model_files))


def _unwrap_named(model):
    inner = getattr(model, "module", model)
    return list(inner.named_parameters())


def _load_weights(d: Path, model) -> None:
    """The fp32 weights a resume continues from: the master copy when the milestone's weights
    were saved in bf16, else the weights themselves."""
    master = d / RESUME / "master.safetensors"
    source = master if master.is_file() else d / "model" / "model.safetensors"
    weights = load_file(str(source))
    inner = getattr(model, "module", model)
    params = dict(inner.named_parameters())
    for name, t in weights.items():
        if name in params and tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"{source}: {name} has shape {list(t.shape)}, "
                             f"the model being trained has {list(params[name].shape)}")
    missing, unexpected = inner.load_state_dict(weights, strict=False)
    # the HF saver may drop buffers (rotary inv_freq); any missing parameter is an error
    param_names = {n for n, _ in inner.named_parameters()}
    if unexpected or param_names & set(missing):
        raise ValueError(f"{d}: checkpoint weights do not match the model "
                         f"(missing {sorted(param_names & set(missing))[:3]}, unexpected {unexpected[:3]})")


def read_checkpoint(d: Path, model, opt, sched, device: str) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place from a milestone dir; returns its
    state (trainer_state.json with its resume state)."""
    state = json.loads((d / STATE).read_text(encoding="utf-8"))
    r = d / RESUME
    if (r / RESUME_STATE).is_file():
        state = {**state, **json.loads((r / RESUME_STATE).read_text(encoding="utf-8"))}
    else:
        r = d  # the layout before resume/ existed: everything beside model/
    _load_weights(d, model)
    flat = load_file(str(r / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, val in flat.items():
        _, idx, name = key.split(".", 2)
        opt_state.setdefault(int(idx), {})[name] = val
    current = opt.state_dict()
    groups = current["param_groups"]
    for g, saved in zip(groups, state["param_groups"]):
        for k, v in saved.items():
            g[k] = tuple(v) if isinstance(v, list) else v
    opt.load_state_dict({"state": opt_state, "param_groups": groups})
    sched.load_state_dict(state["scheduler"])
    rng = load_file(str(r / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], torch.device(device))
    return state


def resume(out_dir: Path, max_step: int, fingerprint: dict, model, opt, sched, device: str,
           at: Optional[Path] = None) -> int:
    """Restore a milestone in place and return the step to go on from (0 if none): `at` when
    given (the one every rank of a restarted worker group was handed), else the newest one in
    out_dir that keeps its resume state, up to max_step. The run's logs in out_dir are set back to
    that milestone's.

    A checkpoint whose stored job fingerprint differs is refused rather than silently continued.
    """
    ckpt = at if at is not None else latest_checkpoint(out_dir, max_step)
    if ckpt is None:
        return 0
    state = json.loads((Path(ckpt) / STATE).read_text(encoding="utf-8"))
    if state.get("job") != fingerprint:
        raise ValueError(f"{ckpt}: checkpoint belongs to a different job; refusing to resume")
    read_checkpoint(Path(ckpt), model, opt, sched, device)
    step = int(state["step"])
    for name in LOGS:
        saved = Path(ckpt) / RESUME / name
        if saved.is_file() and saved.resolve() != (Path(out_dir) / name).resolve():
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(saved, Path(out_dir) / name)
    return step


# ---------------------------------------------------------------- metrics files


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line torn by a crash ends the usable log
    return rows


def truncate_jsonl(path: Path, upto_step: int) -> list[dict]:
    """Keep only rows with step <= upto_step (a resume replays everything after it)."""
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


__all__ = ["step_dir", "step_of", "complete_checkpoints", "has_resume_state", "latest_checkpoint",
           "resume_to_prune", "prune_resume", "step_checksums", "write_checkpoint", "read_checkpoint",
           "resume", "read_jsonl", "truncate_jsonl", "append_jsonl"]
