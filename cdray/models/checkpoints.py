"""A training run's files on disk: pickle-free step checkpoints, resuming from them, and the jsonl logs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cdray.common.files import fsync_dir, fsync_file, write_json_atomic
from cdray.models.llama import save_model

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


# ---------------------------------------------------------------- step dirs


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step_{step:06d}"


def complete_checkpoints(out_dir: Path, max_step: int | None = None) -> list[tuple[int, Path]]:
    """(step, dir) of every step_XXXXXX dir whose trainer_state.json exists (written last, so
    complete) and whose files still have the sizes it records (a power cut can leave a state file
    beside empty data files on a disk that reorders writes), in step order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for d in out_dir.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "trainer_state.json").is_file() and _sizes_hold(d):
            step = int(m.group(1))
            if max_step is None or step <= max_step:
                found.append((step, d))
    return sorted(found)


def _files(d: Path) -> dict[str, int]:
    return {p.relative_to(d).as_posix(): p.stat().st_size for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "trainer_state.json"}


def _sizes_hold(d: Path) -> bool:
    try:
        recorded = json.loads((d / "trainer_state.json").read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError):
        return False
    if recorded is None:  # written before the state file recorded them
        return True
    have = _files(d)
    return all(have.get(rel) == size for rel, size in recorded.items())


def latest_checkpoint(out_dir: Path, max_step: int | None = None) -> Path | None:
    """The newest complete step dir (up to max_step), or None."""
    found = complete_checkpoints(out_dir, max_step)
    return found[-1][1] if found else None


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


def write_checkpoint(d: Path, model, opt, sched, state: dict, device: str) -> None:
    """Model, optimizer, RNG, then trainer_state.json last: its presence marks the dir complete."""
    if d.exists():
        shutil.rmtree(d)  # a half-written dir from a crash
    d.mkdir(parents=True)
    save_model(model, d / "model")
    tensors, steps = _optimizer_tensors(opt)
    save_file(tensors, str(d / "optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(torch.device(device))
    save_file(rng, str(d / "rng.safetensors"))
    groups = [{k: _json_scalar(v) for k, v in g.items() if k != "params"}
              for g in opt.state_dict()["param_groups"]]
    names = [n for n, _ in _unwrap_named(model)]
    # the data files reach the disk before the state file that marks them complete, and that
    # file records their sizes, so a reordering disk is caught on resume as well
    for f in d.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(d / "model")
    full = dict(state, param_groups=groups, param_steps=steps, scheduler=sched.state_dict(),
                param_names=names, files=_files(d))
    write_json_atomic(d / "trainer_state.json", full)


def _unwrap_named(model):
    inner = getattr(model, "module", model)
    return list(inner.named_parameters())


def read_checkpoint(d: Path, model, opt, sched, device: str) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place from a step dir; returns its state."""
    state = json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    weights = load_file(str(d / "model" / "model.safetensors"))
    inner = getattr(model, "module", model)
    params = dict(inner.named_parameters())
    for name, t in weights.items():
        if name in params and tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"{d / 'model' / 'model.safetensors'}: {name} has shape {list(t.shape)}, "
                             f"the model being trained has {list(params[name].shape)}")
    missing, unexpected = inner.load_state_dict(weights, strict=False)
    # the HF saver may drop buffers (rotary inv_freq); any missing parameter is an error
    param_names = {n for n, _ in inner.named_parameters()}
    if unexpected or param_names & set(missing):
        raise ValueError(f"{d}: checkpoint weights do not match the model "
                         f"(missing {sorted(param_names & set(missing))[:3]}, unexpected {unexpected[:3]})")
    flat = load_file(str(d / "optimizer.safetensors"))
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
    rng = load_file(str(d / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], torch.device(device))
    return state


def resume(out_dir: Path, max_step: int, fingerprint: dict, model, opt, sched, device: str) -> int:
    """Restore the newest complete checkpoint up to max_step in place; the step to go on from (0 if none).

    A checkpoint whose stored job fingerprint differs is refused rather than silently continued.
    """
    ckpt = latest_checkpoint(out_dir, max_step)
    if ckpt is None:
        return 0
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("job") != fingerprint:
        raise ValueError(f"{ckpt}: checkpoint belongs to a different job; refusing to resume")
    read_checkpoint(ckpt, model, opt, sched, device)
    return int(state["step"])


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


__all__ = ["step_dir", "complete_checkpoints", "latest_checkpoint", "write_checkpoint", "read_checkpoint", "resume",
           "read_jsonl", "truncate_jsonl", "append_jsonl"]
