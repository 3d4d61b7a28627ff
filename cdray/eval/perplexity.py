"""The evaluate stage: perplexity of every milestone checkpoint of a training run on the eval split."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cdray.common.faults import pause_point


def milestone_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, model dir) of every complete milestone of a training run, in step order."""
    from cdray.models.checkpoints import complete_checkpoints

    return [(step, d / "model") for step, d in complete_checkpoints(run_dir) if (d / "model").is_dir()]


def eval_blocks(tokens: np.ndarray, seq_len: int, max_blocks: Optional[int]) -> list[np.ndarray]:
    """Cut the eval stream into seq_len blocks; the shorter tail block is kept (all tokens count)."""
    blocks = [tokens[i:i + seq_len] for i in range(0, len(tokens), seq_len)]
    blocks = [b for b in blocks if len(b) >= 2]
    return blocks[:max_blocks] if max_blocks else blocks


@torch.inference_mode()
def perplexity(model, blocks: list[np.ndarray], batch_size: int, device: str = "cpu",
               precision: str = "fp32") -> dict:
    """exp(mean next-token loss) over every predicted token of the blocks (precision: the forward
    passes', cdray.eval.device.autocast; the log-softmax is always fp32)."""
    from cdray.eval.device import autocast

    total_nll, total_tokens = 0.0, 0
    model.eval()
    for i in range(0, len(blocks), batch_size):
        chunk = blocks[i:i + batch_size]
        width = max(len(b) for b in chunk)
        ids = torch.full((len(chunk), width), 0, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, b in enumerate(chunk):
            ids[j, :len(b)] = torch.from_numpy(np.asarray(b, dtype=np.int64))
            mask[j, :len(b)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast(device, precision):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        valid = mask[:, 1:].bool()
        total_nll += float(nll[valid].sum())
        total_tokens += int(valid.sum())
    loss = total_nll / max(total_tokens, 1)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": total_tokens}


def evaluate_run(run_dir: Path, eval_tokens: Path, out_dir: Path, *, seq_len: int,
                 max_blocks: Optional[int], batch_size: int, device: str = "cpu",
                 precision: str = "fp32") -> dict:
    """Perplexity per milestone; writes perplexity.json and returns the summary."""
    from cdray.models.llama import load_model

    tokens = np.load(eval_tokens, mmap_mode="r")
    blocks = eval_blocks(tokens, seq_len, max_blocks)
    if not blocks:
        raise ValueError(f"{eval_tokens}: eval split has no tokens to score")
    rows = []
    for step, model_dir in milestone_dirs(run_dir):
        pause_point(out_dir, "evaluate-step", step)
        model = load_model(model_dir, device=device)
        rows.append({"step": step, **perplexity(model, blocks, batch_size, device, precision)})
    if not rows:
        raise ValueError(f"{run_dir}: no complete milestone checkpoints to evaluate")
    best = min(rows, key=lambda r: r["ppl"])
    summary = {
        "milestones": rows,
        "final_step": rows[-1]["step"],
        "final_ppl": rows[-1]["ppl"],
        "best_step": best["step"],
        "best_ppl": best["ppl"],
        "eval_tokens": rows[-1]["tokens"],
    }
    (out_dir / "perplexity.json").write_text(json.dumps(summary, indent=1))
    return summary
