"""Where an evaluation runs and in what precision: its device, the GPUs its Ray task asks for, the
autocast around its forward passes."""
from __future__ import annotations

import contextlib


# the stages whose Ray tasks evaluate a model: perplexity of a run, a checkpoint's BabyLM tasks
EVALUATION_STAGES = frozenset({"evaluate", "babylm"})


def task_gpus(stage: str, use_gpu: bool) -> int:
    """GPUs the Ray task building a node of `stage` asks for: one for an evaluation stage of a
    sweep that trains on GPUs (train.use_gpu), so it lands on a GPU node and runs there; none
    for the other task stages (corpus, tokens, ...: CPU work) or a CPU sweep."""
    return 1 if use_gpu and stage in EVALUATION_STAGES else 0


def eval_device(use_gpu: bool) -> str:
    """The torch device of an evaluation task: `cuda` is the one GPU Ray granted it (Ray sets
    CUDA_VISIBLE_DEVICES to it), `cpu` on a CPU sweep."""
    return "cuda" if task_gpus("evaluate", use_gpu) else "cpu"


PRECISIONS = ("fp32", "bf16")


def _mixed(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown evaluation precision {precision!r} (one of {list(PRECISIONS)})")
    return precision == "bf16"


def autocast(device, precision: str):
    """The context of an evaluation's forward passes: bf16 autocast on the model's device, or
    nothing at all for fp32 (the path every existing number was measured on)."""
    if not _mixed(precision):
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def lm_eval_dtypes(precision: str) -> dict:
    """HFLM's arguments for `precision`: its forward under bf16 autocast, log-softmax in fp32."""
    if not _mixed(precision):
        return {}
    import torch

    return {"mixed_precision_dtype": torch.bfloat16, "softmax_dtype": torch.float32}
