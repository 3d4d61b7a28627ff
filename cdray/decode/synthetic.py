"""The generate stage's pure parts: prompts, the shard plan and the per-shard generator each actor holds."""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cdray.common.faults import crash_point, hold_seconds, pause_point
from cdray.common.files import file_sha256, write_json_atomic
from cdray.common.special_tokens import BOS_ID
from cdray.config import NEEDS_AMATEUR, GenerationConfig
from cdray.decode.shards import (
    SHARD_SCHEMA,
    json_safe,
    shard_paths,
    utilization,
    write_parquet_atomic,
)

VERSION = 2

AMATEUR_KINDS = ("none", "early", "small", "dropout")
MAX_SHARDS_PER_ACTOR = 8  # threads an actor's calls may take (each holds a shard's rows)


# ---------------------------------------------------------------- small helpers


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


def shards_per_actor(batch_size: int, shard_rows: int) -> int:
    """Shards an actor runs at once through its one decode batch (ShardGenerator): two when a
    shard holds a batch's worth of rows, else enough that another batch's worth is still queued
    when the shards filling the batch end (rows of equal length end in the same step), so the
    batch stays full while those shards are written."""
    fill = math.ceil(batch_size / max(1, shard_rows))  # shards it takes to fill the batch
    return min(MAX_SHARDS_PER_ACTOR, 2 * max(1, fill))


# ---------------------------------------------------------------- prompts


def make_prompts(seed_parquet: Path, tokenizer_dir: Path, prompt_tokens: int, out_path: Path) -> dict:
    """Cut each seed chunk to [BOS] + its first prompt_tokens-1 tokens; write prompts.parquet."""
    from cdray.data.tokenizer import load_tokenizer

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
    write_parquet_atomic(table, out_path)
    return {"prompts": len(prompts)}


def budget_reachable(gen, n_prompts: int) -> None:
    """A ConfigError naming generation.token_budget when the seed split cannot yield it even if
    no row stopped early (n_prompts x continuations x max_new_tokens): checked as soon as the
    prompts exist, before the GOOD is trained."""
    from cdray.config import ConfigError

    most = n_prompts * gen.continuations * gen.max_new_tokens
    if most < gen.token_budget:
        raise ConfigError("generation.token_budget",
                          f"{gen.token_budget} new tokens cannot come from the seed split: {n_prompts} "
                          f"prompts x {gen.continuations} continuations x {gen.max_new_tokens} new tokens "
                          f"= {most} at most; lower the budget or raise corpus.seed_fraction, "
                          f"generation.continuations or generation.max_new_tokens")


# ---------------------------------------------------------------- the generator class


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def shard_table(keys, full, texts, results, contaminated) -> pa.Table:
    """One shard's rows as the corpus's parquet schema (prompt id, continuation, tokens, text, row telemetry)."""
    return pa.table({
        "prompt_id": pa.array([k[0] for k in keys], type=pa.int64()),
        "continuation": pa.array([k[1] for k in keys], type=pa.int32()),
        "tokens": pa.array(full, type=pa.list_(pa.int32())),
        "new_tokens": pa.array([len(r.tokens) for r in results], type=pa.int32()),
        "text": pa.array(texts, type=pa.string()),
        "eos": pa.array([r.stopped_at_eos for r in results], type=pa.bool_()),
        "head_size_mean": pa.array([r.head_size_mean for r in results], type=pa.float32()),
        "expert_nll_mean": pa.array([r.expert_nll_mean for r in results], type=pa.float32()),
        "amateur_nll_mean": pa.array([r.amateur_nll_mean for r in results], type=pa.float32()),
        "contaminated": pa.array(contaminated, type=pa.bool_()),
    }, schema=SHARD_SCHEMA)


class ShardGenerator:
    """Ray Data map_batches callable: generates and commits whole shards, skipping committed ones.

    Every row depends only on (prompt, prompt id, continuation, models, config), so re-running a
    shard writes the same parquet bytes (up to float nondeterminism of batched matmuls).
    Calls may run in several threads at once (Ray Data's max_concurrent_calls_per_actor): their
    shards share one decode batch (SharedBatch), and each commits as its own rows end.
    """

    def __init__(self, *, expert_dir: str, amateur: dict, strategy: str, generation: GenerationConfig,
                 prompts_path: str, out_dir: str, tokenizer_dir: str, device: str = "cpu",
                 torch_threads: int = 1, eval_parquet: str | None = None,
                 eval_items_dir: str | None = None, data_cache: str | None = None):
        import torch

        from cdray.data.tokenizer import load_decoder
        from cdray.decode.engine import Decoder, plan_batch_size
        from cdray.decode.shared_batch import SharedBatch
        from cdray.models.weights import load_weights

        if device == "cpu":
            torch.set_num_threads(torch_threads)
        hold_seconds("generate")  # the schedule benchmark's set length (nothing unless asked)
        self.g = generation
        self.strategy = strategy
        self.device = device
        self.dtype = _torch_dtype(self.g.precision)
        self.out_dir = Path(out_dir)
        kind = amateur.get("kind", "none")
        if kind not in AMATEUR_KINDS:
            raise ValueError(f"amateur kind {kind!r} is not one of {list(AMATEUR_KINDS)}")
        if strategy in NEEDS_AMATEUR and kind == "none":
            raise ValueError(f"strategy {strategy!r} needs an amateur (got kind 'none')")

        # plain tensors on the CPU: the decoder stacks them onto the device in its dtype
        self.expert = load_weights(Path(expert_dir))
        self.amateur = None
        self.amateur_dropout = kind == "dropout"
        # a no-contrast strategy never reads amateur logits: don't load one
        if kind != "none" and strategy in NEEDS_AMATEUR:
            if kind == "dropout":
                # GOOD's own weights: the decoder drops attention in the amateur's half only
                amateur_dir = Path(expert_dir)
                self.amateur = self.expert
            else:
                amateur_dir = Path(amateur["model_dir"])
                self.amateur = load_weights(amateur_dir)
            ev, av = self.expert.config.vocab_size, self.amateur.config.vocab_size
            if ev != av:
                raise ValueError(f"amateur {amateur_dir} has vocab size {av}, expert {expert_dir} "
                                 f"has {ev}")
        self.tokenizer = load_decoder(Path(tokenizer_dir))
        self.prompts = pq.read_table(prompts_path, columns=["prompt_id", "prompt"])
        drop = float(amateur.get("dropout", 0.0)) if self.amateur_dropout else 0.0
        self.decoder = Decoder(self.expert, self.amateur, strategy, self.g.decoding, device=device,
                               dtype=self.dtype, amateur_dropout=drop, engine=self.g.engine,
                               attention=self.g.attention, compile_layers=self.g.compile_layers,
                               kv_cache=self.g.kv_cache)
        # a fixed cache length: rows never depend on the prompts they share a batch with
        self.max_len = self.g.prompt_tokens + self.g.max_new_tokens
        self.batch_size = plan_batch_size(self.decoder.groups, self.max_len, self.g.batch_size,
                                          self.g.memory_fraction, device)
        # the shards this actor runs at once share one batch: the next shard's rows fill the
        # slots the last rows of the previous one leave
        self.batch = SharedBatch(self.decoder, max_new_tokens=self.g.max_new_tokens,
                                 stop_at_eos=self.g.stop_at_eos, batch_size=self.batch_size,
                                 max_len=self.max_len, refill=self.g.refill)
        self.contamination = None
        if self.g.decontaminate_n > 0 and (eval_parquet or eval_items_dir):
            from cdray.data.telemetry import NgramIndex, reference_texts

            self.contamination = NgramIndex(self.g.decontaminate_n)
            # eval_items_dir may be a URI: this node mirrors it into data_cache (the store's downloads)
            for text in reference_texts(Path(eval_parquet) if eval_parquet else None, eval_items_dir,
                                        Path(data_cache) if data_cache else None):
                self.contamination.add(text)
        # the decoder holds its own (stacked) copy of the weights: free the loaded ones
        self.expert = self.amateur = None
        self._log(f"actor ready: strategy={strategy} amateur={kind} engine="
                  f"{'stacked' if len(self.decoder.groups) == 1 and self.decoder.groups[0].G == 2 else 'separate'}"
                  f" batch={self.batch_size} (cap {self.g.batch_size}) device={device}")

    def _log(self, msg: str) -> None:
        if self.g.progress:
            print(f"[cdray.generate] {msg}", file=sys.stderr, flush=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"shard_id": [], "rows": [], "new_tokens": [], "clean_tokens": []}
        for sid, start, end in zip(batch["shard_id"], batch["start"], batch["end"]):
            manifest = self.run_shard(int(sid), int(start), int(end))
            for key in ("shard_id", "rows", "new_tokens"):
                out[key].append(manifest[key])
            out["clean_tokens"].append(manifest.get("clean_tokens", manifest["new_tokens"]))
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}

    def run_shard(self, shard_id: int, start: int, end: int) -> dict:
        """Generate and commit one shard, or return its manifest when already committed."""
        from cdray.data.telemetry import row_stats, text_stats
        from cdray.data.tokenizer import decode_texts

        parquet_path, manifest_path = shard_paths(self.out_dir, shard_id)
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
        progress = {"rows": 0, "tokens": 0, "seconds": 0.0, "last": t0}

        def on_row(_i, r) -> None:
            progress["rows"] += 1
            progress["tokens"] += len(r.tokens)
            progress["seconds"] += r.seconds
            now = time.perf_counter()
            if now - progress["last"] >= 30.0:
                progress["last"] = now
                rate = progress["tokens"] / max(progress["seconds"], 1e-9)
                self._log(f"shard {shard_id}: {progress['rows']}/{len(keys)} rows, "
                          f"{progress['tokens']} tokens, {rate:.0f} tok/s")

        results, usage = self.batch.generate(row_prompts, seeds, on_row=on_row)
        crash_point(self.out_dir, "shard", shard_id)  # mid-shard: generated, nothing written yet
        pause_point(self.out_dir, "shard", shard_id)
        full = [p + r.tokens for p, r in zip(row_prompts, results)]
        texts = decode_texts(self.tokenizer, full)
        conts = [r.tokens for r in results]
        cont_texts = decode_texts(self.tokenizer, conts)
        if self.contamination is not None:
            contaminated = [self.contamination.overlaps(t) for t in cont_texts]
        else:
            contaminated = [False] * len(results)
        table = shard_table(keys, full, texts, results, contaminated)
        parquet_path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, parquet_path)
        new_tokens = int(sum(len(r.tokens) for r in results))
        clean_tokens = int(sum(len(r.tokens) for r, c in zip(results, contaminated) if not c))
        seconds = time.perf_counter() - t0
        # the shard's share of its actor's decode batch (a shard beside it has the rest)
        decode_seconds = float(sum(r.seconds for r in results))
        stats = row_stats(np.array([len(r.tokens) for r in results]),
                          np.array([r.stopped_at_eos for r in results]),
                          np.array([r.head_size_mean for r in results]),
                          np.array([r.expert_nll_mean for r in results]),
                          np.array([r.amateur_nll_mean for r in results]), conts, g.max_new_tokens)
        stats.update(text_stats(cont_texts))
        stats["contamination_rate"] = float(np.mean(contaminated)) if contaminated else 0.0
        stats["slot_utilization"] = utilization(usage["row_steps"], usage["slot_steps"])
        manifest = {
            "shard_id": shard_id,
            "rows": table.num_rows,
            "new_tokens": new_tokens,
            "clean_tokens": clean_tokens,  # of rows not flagged as contaminated
            "sha256": file_sha256(parquet_path),
            "seconds": round(seconds, 3),  # from the call to the commit
            "decode_seconds": round(decode_seconds, 3),
            "tokens_per_s": round(new_tokens / decode_seconds, 1) if decode_seconds > 0 else 0.0,
            "batch_size": self.batch_size,
            # slots computed over the decode steps while this shard ran, and the tokens they
            # sampled (of every row in the batch then: a shard running beside it shares them)
            "slot_steps": usage["slot_steps"],
            "row_steps": usage["row_steps"],
            "stats": json_safe(stats),
        }
        # the manifest is the commit: written only after the parquet is in place
        write_json_atomic(manifest_path, manifest)
        self._log(f"shard {shard_id} committed: {table.num_rows} rows, {new_tokens} tokens, "
                  f"{manifest['tokens_per_s']:.0f} tok/s, batch slots "
                  f"{stats['slot_utilization']:.0%} busy")
        return manifest


