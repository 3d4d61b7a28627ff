"""The generate stage's pure parts: prompts, shard plan, the per-shard generator class, finalisation."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdray.faults import crash_point
from cdray.store import file_sha256, writing

VERSION = 1
BOS_ID = 1

SHARD_SCHEMA = pa.schema([
    ("prompt_id", pa.int64()),
    ("continuation", pa.int32()),
    ("tokens", pa.list_(pa.int32())),
    ("new_tokens", pa.int32()),
    ("text", pa.string()),
    ("eos", pa.bool_()),
    ("head_size_mean", pa.float32()),
])

AMATEUR_KINDS = ("none", "early", "small", "dropout")


# ---------------------------------------------------------------- small helpers


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            tmp.write_text(json.dumps(obj, sort_keys=True, indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def row_seed(seed: int, prompt_id: int, continuation: int) -> int:
    """A stable 63-bit seed per (run seed, prompt, continuation); Python's hash() is salted."""
    digest = hashlib.blake2b(f"{seed}:{prompt_id}:{continuation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def shard_plan(n_prompts: int, shard_prompts: int) -> list[dict]:
    """Contiguous prompt ranges [start, end) of at most shard_prompts each."""
    if shard_prompts < 1:
        raise ValueError(f"shard_prompts={shard_prompts} must be >= 1")
    return [{"shard_id": i, "start": a, "end": min(a + shard_prompts, n_prompts)}
            for i, a in enumerate(range(0, n_prompts, shard_prompts))]


def shards_needed(shard_token_counts: list[int], token_budget: int) -> int:
    """How many leading shards reach token_budget new tokens (all of them if none do)."""
    total = 0
    for i, n in enumerate(shard_token_counts):
        total += n
        if total >= token_budget:
            return i + 1
    return len(shard_token_counts)


def _shards_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "shards"


def _shard_paths(out_dir: Path, shard_id: int) -> tuple[Path, Path]:
    base = _shards_dir(out_dir) / f"shard_{shard_id:05d}"
    return base.with_suffix(".parquet"), base.with_suffix(".json")


def shards_done(out_dir: Path) -> set[int]:
    """Ids of committed shards (those whose manifest exists: it is written last)."""
    d = _shards_dir(out_dir)
    if not d.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in d.glob("shard_*.json")}


# ---------------------------------------------------------------- prompts


def make_prompts(seed_parquet: Path, tokenizer_dir: Path, prompt_tokens: int, out_path: Path) -> dict:
    """Cut each seed chunk to [BOS] + its first prompt_tokens-1 tokens; write prompts.parquet."""
    from cdray.tokenizer import load_tokenizer

    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens={prompt_tokens} must be >= 1")
    seed = pq.read_table(seed_parquet, columns=["doc_id", "text"])
    texts = seed.column("text").to_pylist()
    tok = load_tokenizer(Path(tokenizer_dir))
    # BOS is added by hand so the prompt doesn't depend on the tokenizer's post-processor
    encoded = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    prompts = [[BOS_ID] + list(ids[: prompt_tokens - 1]) for ids in encoded]
    table = pa.table({
        "prompt_id": pa.array(np.arange(len(prompts), dtype=np.int64)),
        "doc_id": seed.column("doc_id"),
        "prompt": pa.array(prompts, type=pa.list_(pa.int32())),
    })
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_parquet_atomic(table, out_path)
    return {"prompts": len(prompts)}


# ---------------------------------------------------------------- the generator class


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def _generation_config(generation):
    from cdray import config

    if isinstance(generation, config.GenerationConfig):
        return generation
    g = config._build(config.GenerationConfig, generation, "generation")
    g.validate("generation")
    return g


class ShardGenerator:
    """Ray Data map_batches callable: generates and commits whole shards, skipping committed ones.

    Every row depends only on (prompt, prompt id, continuation, models, config), so re-running a
    shard writes the same parquet bytes (up to float nondeterminism of batched matmuls).
    """

    def __init__(self, *, expert_dir: str, amateur: dict, strategy: str, generation: dict,
                 prompts_path: str, out_dir: str, tokenizer_dir: str, device: str = "cpu",
                 torch_threads: int = 1):
        import torch

        from cdray.decoding import NEEDS_AMATEUR
        from cdray.model import load_model
        from cdray.tokenizer import load_tokenizer

        if device == "cpu":
            torch.set_num_threads(torch_threads)
        self.g = _generation_config(generation)
        self.strategy = strategy
        self.device = device
        self.dtype = _torch_dtype(self.g.precision)
        self.out_dir = Path(out_dir)
        kind = amateur.get("kind", "none")
        if kind not in AMATEUR_KINDS:
            raise ValueError(f"amateur kind {kind!r} is not one of {list(AMATEUR_KINDS)}")
        if strategy in NEEDS_AMATEUR and kind == "none":
            raise ValueError(f"strategy {strategy!r} needs an amateur (got kind 'none')")

        self.expert = load_model(Path(expert_dir), dtype=self.dtype, device=device).eval()
        self.amateur = None
        self.amateur_dropout = kind == "dropout"
        # a no-contrast strategy never reads amateur logits: don't load one
        if kind != "none" and strategy in NEEDS_AMATEUR:
            if kind == "dropout":
                amateur_dir = Path(expert_dir)
                self.amateur = load_model(amateur_dir, dtype=self.dtype, device=device,
                                          attention_dropout=float(amateur["dropout"]))
            else:
                amateur_dir = Path(amateur["model_dir"])
                self.amateur = load_model(amateur_dir, dtype=self.dtype, device=device)
            ev, av = self.expert.config.vocab_size, self.amateur.config.vocab_size
            if ev != av:
                raise ValueError(f"amateur {amateur_dir} has vocab size {av}, expert {expert_dir} "
                                 f"has {ev}")
        self.tokenizer = load_tokenizer(Path(tokenizer_dir))
        self.prompts = pq.read_table(prompts_path, columns=["prompt_id", "prompt"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"shard_id": [], "rows": [], "new_tokens": []}
        for sid, start, end in zip(batch["shard_id"], batch["start"], batch["end"]):
            manifest = self.run_shard(int(sid), int(start), int(end))
            out["shard_id"].append(manifest["shard_id"])
            out["rows"].append(manifest["rows"])
            out["new_tokens"].append(manifest["new_tokens"])
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}

    def run_shard(self, shard_id: int, start: int, end: int) -> dict:
        """Generate and commit one shard, or return its manifest when already committed."""
        from cdray.decoding import generate

        parquet_path, manifest_path = _shard_paths(self.out_dir, shard_id)
        if manifest_path.exists():
            return json.loads(manifest_path.read_text())
        t0 = time.perf_counter()
        g = self.g
        part = self.prompts.slice(start, max(0, end - start))
        ids = part.column("prompt_id").to_pylist()
        prompts = part.column("prompt").to_pylist()
        keys = [(pid, c) for pid in ids for c in range(g.continuations)]
        row_prompts = [p for p in prompts for _ in range(g.continuations)]
        seeds = [row_seed(g.seed, pid, c) for pid, c in keys]
        results = generate(self.expert, self.amateur, row_prompts, seeds, self.strategy,
                           g.decoding, max_new_tokens=g.max_new_tokens, stop_at_eos=g.stop_at_eos,
                           batch_size=g.batch_size, device=self.device, dtype=self.dtype,
                           amateur_dropout=self.amateur_dropout)
        crash_point(self.out_dir, "shard", shard_id)  # mid-shard: generated, nothing written yet
        full = [p + r.tokens for p, r in zip(row_prompts, results)]
        texts = self.tokenizer.batch_decode(full, skip_special_tokens=True) if full else []
        table = pa.table({
            "prompt_id": pa.array([k[0] for k in keys], type=pa.int64()),
            "continuation": pa.array([k[1] for k in keys], type=pa.int32()),
            "tokens": pa.array(full, type=pa.list_(pa.int32())),
            "new_tokens": pa.array([len(r.tokens) for r in results], type=pa.int32()),
            "text": pa.array(texts, type=pa.string()),
            "eos": pa.array([r.stopped_at_eos for r in results], type=pa.bool_()),
            "head_size_mean": pa.array([r.head_size_mean for r in results], type=pa.float32()),
        }, schema=SHARD_SCHEMA)
        parquet_path.parent.mkdir(parents=True, exist_ok=True)
        _write_parquet_atomic(table, parquet_path)
        manifest = {
            "shard_id": shard_id,
            "rows": table.num_rows,
            "new_tokens": int(sum(len(r.tokens) for r in results)),
            "sha256": file_sha256(parquet_path),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        # the manifest is the commit: written only after the parquet is in place
        _write_json_atomic(manifest, manifest_path)
        return manifest


# ---------------------------------------------------------------- finalisation


def _read_committed(out_dir: Path, shard_id: int) -> pa.Table:
    parquet_path, manifest_path = _shard_paths(out_dir, shard_id)
    manifest = json.loads(manifest_path.read_text())
    if not parquet_path.is_file():
        raise ValueError(f"committed shard {parquet_path} is missing")
    if file_sha256(parquet_path) != manifest["sha256"]:
        raise ValueError(f"shard {parquet_path} does not match the sha256 in its manifest")
    return pq.read_table(parquet_path).cast(SHARD_SCHEMA).sort_by(
        [("prompt_id", "ascending"), ("continuation", "ascending")])


def finalize_corpus(out_dir: Path, n_shards_planned: int, token_budget: int) -> dict:
    """Concatenate committed shards into corpus.parquet, cut at token_budget new tokens.

    Only the leading run of committed shards (0, 1, ... up to the first missing one) is used, so
    the corpus does not depend on which shards happened to finish first. The row whose new
    tokens cross the budget is kept; everything after it is dropped. head_size_mean is the
    token-weighted mean over kept rows (i.e. the mean over all decoding steps).
    """
    out_dir = Path(out_dir)
    done = shards_done(out_dir)
    tables, total, used = [], 0, 0
    for sid in range(n_shards_planned):
        if total >= token_budget or sid not in done:
            break
        table = _read_committed(out_dir, sid)
        used += 1
        counts = np.asarray(table.column("new_tokens").to_numpy(), dtype=np.int64)
        cum = total + np.cumsum(counts)
        crossing = np.nonzero(cum >= token_budget)[0]
        if len(crossing):
            table = table.slice(0, int(crossing[0]) + 1)
        total += int(np.asarray(table.column("new_tokens").to_numpy(), dtype=np.int64).sum())
        tables.append(table)
    corpus = pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()
    _write_parquet_atomic(corpus, out_dir / "corpus.parquet")

    rows = corpus.num_rows
    new_tokens = np.asarray(corpus.column("new_tokens").to_numpy(), dtype=np.int64)
    lengths = pc.list_value_length(corpus.column("tokens")).to_numpy(zero_copy_only=False)
    heads = np.asarray(corpus.column("head_size_mean").to_numpy(), dtype=np.float64)
    n_new = int(new_tokens.sum())
    return {
        "rows": rows,
        "new_tokens": n_new,
        "tokens_total": int(np.asarray(lengths, dtype=np.int64).sum()) if rows else 0,
        "eos_rate": float(np.mean(corpus.column("eos").to_numpy(zero_copy_only=False))) if rows else 0.0,
        "mean_new_tokens": n_new / rows if rows else 0.0,
        "head_size_mean": float((heads * new_tokens).sum() / n_new) if n_new else 0.0,
        "shards_used": used,
        "budget_reached": n_new >= token_budget,
    }
