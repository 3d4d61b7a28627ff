"""A synthetic corpus on disk: shards committed one by one (each with its own manifest), the
leading shards that hold the budget, and the final corpus cut from them with its summary."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdray.common.files import file_sha256, replacing

STATS_TOKENS = 2_000_000  # repetition rate of a corpus reads its first 2M new tokens

SHARD_SCHEMA = pa.schema([
    ("prompt_id", pa.int64()),
    ("continuation", pa.int32()),
    ("tokens", pa.list_(pa.int32())),
    ("new_tokens", pa.int32()),
    ("text", pa.string()),
    ("eos", pa.bool_()),
    ("head_size_mean", pa.float32()),
    ("expert_nll_mean", pa.float32()),
    ("amateur_nll_mean", pa.float32()),  # NaN without an amateur
    ("contaminated", pa.bool_()),  # shares a word n-gram with the eval split / eval items
])


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    # through the store's temporary names: the stage stops its actor pool at the budget, maybe
    # mid-write, and a temporary must never be taken for part of the artifact
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


def leading_tokens(token_counts: dict[int, int], n_shards: int) -> int:
    """New tokens of the leading run of committed shards 0, 1, ... up to the first missing one
    (token_counts: shard id -> new tokens of each committed shard), the ones a corpus is cut from."""
    total = 0
    for sid in range(n_shards):
        if sid not in token_counts:
            break
        total += token_counts[sid]
    return total


def shards_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "shards"


def shard_paths(out_dir: Path, shard_id: int) -> tuple[Path, Path]:
    base = shards_dir(out_dir) / f"shard_{shard_id:05d}"
    return base.with_suffix(".parquet"), base.with_suffix(".json")


def shards_done(out_dir: Path) -> set[int]:
    """Ids of committed shards (those whose manifest exists: it is written last)."""
    d = shards_dir(out_dir)
    if not d.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in d.glob("shard_*.json")}


def committed_tokens(out_dir: Path, count: str = "new_tokens") -> dict[int, int]:
    """New tokens of every committed shard, by shard id, from the shards' manifests: all of them,
    or with count="clean_tokens" those of rows not flagged as contaminated (what a corpus that
    drops such rows keeps; a manifest written before it had that count gives all its tokens)."""
    out = {}
    for sid in shards_done(out_dir):
        manifest = json.loads(shard_paths(out_dir, sid)[1].read_text())
        out[sid] = int(manifest.get(count, manifest["new_tokens"]))
    return out


def utilization(row_steps: int, slot_steps: int) -> float:
    """Share of the computed batch slots that sampled a token (1.0: the batch was always full)."""
    return row_steps / slot_steps if slot_steps else 1.0


def json_safe(obj):
    """NaN/inf become None so manifests stay strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------- finalisation


def _read_committed(out_dir: Path, shard_id: int) -> pa.Table:
    parquet_path, manifest_path = shard_paths(out_dir, shard_id)
    manifest = json.loads(manifest_path.read_text())
    if not parquet_path.is_file():
        raise ValueError(f"committed shard {parquet_path} is missing")
    if file_sha256(parquet_path) != manifest["sha256"]:
        raise ValueError(f"shard {parquet_path} does not match the sha256 in its manifest")
    return pq.read_table(parquet_path).cast(SHARD_SCHEMA).sort_by(
        [("prompt_id", "ascending"), ("continuation", "ascending")])


def finalize_corpus(out_dir: Path, n_shards_planned: int, token_budget: int, *,
                    drop_contaminated: bool = False, tokenizer_dir: Path | None = None,
                    max_new_tokens: int | None = None) -> dict:
    """Concatenate committed shards into corpus.parquet, cut at token_budget new tokens.

    Only the leading run of committed shards (0, 1, ... up to the first missing one) is used, so
    the corpus does not depend on which shards happened to finish first. With drop_contaminated,
    rows flagged `contaminated` are left out before counting. The row whose new tokens cross the
    budget is kept; everything after it is dropped. Means of per-row telemetry are
    token-weighted (i.e. means over all decoding steps); text statistics (distinct-n, diversity)
    read the continuations of the first 100K words (decoded with tokenizer_dir when given).
    """
    out_dir = Path(out_dir)
    done = shards_done(out_dir)
    tables, total, used, considered, flagged = [], 0, 0, 0, 0
    gen_seconds, gen_tokens, slot_steps, row_steps = 0.0, 0, 0, 0
    for sid in range(n_shards_planned):
        if total >= token_budget or sid not in done:
            break
        table = _read_committed(out_dir, sid)
        used += 1
        meta = json.loads(shard_paths(out_dir, sid)[1].read_text())
        # older shards have no decode_seconds: they ran one per actor at a time
        gen_seconds += float(meta.get("decode_seconds", meta.get("seconds", 0.0)))
        gen_tokens += int(meta.get("new_tokens", 0))
        if "slot_steps" in meta:  # shards committed before cdray counted slots have neither
            slot_steps += int(meta["slot_steps"])
            row_steps += int(meta["row_steps"])
        flags = np.asarray(table.column("contaminated").to_numpy(zero_copy_only=False), dtype=bool)
        counts = np.asarray(table.column("new_tokens").to_numpy(), dtype=np.int64)
        if drop_contaminated:
            counts = np.where(flags, 0, counts)  # dropped rows do not count toward the budget
        crossing = np.nonzero(total + np.cumsum(counts) >= token_budget)[0]
        cut = int(crossing[0]) + 1 if len(crossing) else table.num_rows
        table, flags = table.slice(0, cut), flags[:cut]
        considered += cut
        flagged += int(flags.sum())
        if drop_contaminated:
            table = table.filter(pa.array(~flags))
        total += int(counts[:cut].sum())
        tables.append(table)
    corpus = pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()
    write_parquet_atomic(corpus, out_dir / "corpus.parquet")
    summary = corpus_summary(corpus, tokenizer_dir, max_new_tokens)
    summary.update({
        "shards_used": used,
        "budget_reached": summary["new_tokens"] >= token_budget,
        "contamination_rate": flagged / considered if considered else 0.0,
        "contaminated_dropped": flagged if drop_contaminated else 0,
        # actor-seconds the shards used took of their actors' decode batches (several actors
        # run at once: wall time is less)
        "generate_seconds": round(gen_seconds, 3),
        "tokens_per_actor_s": gen_tokens / gen_seconds if gen_seconds > 0 else 0.0,
        # how full the actors' batches were while those shards ran: below 1, a batch drained
        # (no rows left to refill with: at the stage's end, or a shard an actor ran alone)
        "slot_utilization": utilization(row_steps, slot_steps),
    })
    return json_safe(summary)


def corpus_summary(corpus: pa.Table, tokenizer_dir: Path | None = None,
                   max_new_tokens: int | None = None) -> dict:
    """Counts and telemetry of a generated corpus table (see cdray.data.telemetry)."""
    from cdray.data.telemetry import DIVERSITY_WORDS, row_stats, text_stats

    rows = corpus.num_rows
    new_tokens = np.asarray(corpus.column("new_tokens").to_numpy(), dtype=np.int64)
    lengths = pc.list_value_length(corpus.column("tokens")).to_numpy(zero_copy_only=False)
    # sequence-level statistics read a leading window, not the whole (possibly 100M-token) corpus
    window = int(np.searchsorted(np.cumsum(new_tokens), STATS_TOKENS)) + 1 if rows else 0
    tokens = corpus.column("tokens").slice(0, window).to_pylist()
    conts = [t[len(t) - n:] if n else [] for t, n in zip(tokens, new_tokens[:window].tolist())]

    def col(name):
        return np.asarray(corpus.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    out = {
        "rows": rows,
        "new_tokens": int(new_tokens.sum()),
        "tokens_total": int(np.asarray(lengths, dtype=np.int64).sum()) if rows else 0,
        "mean_new_tokens": float(new_tokens.sum()) / rows if rows else 0.0,
    }
    out.update(row_stats(new_tokens, col("eos") > 0, col("head_size_mean"), col("expert_nll_mean"),
                         col("amateur_nll_mean"), conts,
                         max_new_tokens or int(new_tokens.max(initial=1))))
    if tokenizer_dir is not None:
        from cdray.data.tokenizer import load_tokenizer

        tok = load_tokenizer(Path(tokenizer_dir))
        # continuations are decoded only until the diversity window is full
        texts, n_words = [], 0
        for c in conts:
            if n_words >= DIVERSITY_WORDS:
                break
            texts.append(tok.decode(c, skip_special_tokens=True))
            n_words += len(texts[-1].split())
    else:
        texts = corpus.column("text").to_pylist()
    out.update(text_stats(texts))
    return out
