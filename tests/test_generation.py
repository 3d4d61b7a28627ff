"""Tests of cdray.decode.synthetic: prompts, seeds, shard plan, ShardGenerator with resume, finalisation."""
import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdray import config
from cdray.config import DecodingConfig, GenerationConfig
from cdray.decode.shards import committed_tokens, finalize_corpus, leading_tokens, shards_done
from cdray.decode.synthetic import (
    MAX_SHARDS_PER_ACTOR,
    ShardGenerator,
    make_prompts,
    row_seed,
    shard_plan,
    shards_per_actor,
)

torch.set_num_threads(1)

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
WORDS = [f"w{i}" for i in range(4, 64)]


def save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)
    return path


def save_llama(path, seed, vocab_size=64, layers=2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tok_dir = save_tokenizer(root / "tok")
    texts = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3 + i)) for i in range(7)]
    pq.write_table(pa.table({"source": ["s"] * 7, "doc_id": [f"d{i}" for i in range(7)],
                             "text": texts, "words": [3 + i for i in range(7)]}),
                   root / "seed.parquet")
    info = make_prompts(root / "seed.parquet", tok_dir, 5, root / "prompts.parquet")
    return {
        "root": root, "tok": str(tok_dir), "texts": texts, "info": info,
        "expert": save_llama(root / "expert", 0),
        "amateur": save_llama(root / "amateur", 1, layers=1),
        "amateur_same": save_llama(root / "amateur_same", 4),
        "bad_vocab": save_llama(root / "bad_vocab", 2, vocab_size=80),
    }


def gen_config(**kw):
    return GenerationConfig(decoding=DecodingConfig(alpha=0.1, penalty=-20.0), prompt_tokens=5,
                            continuations=2, max_new_tokens=10, batch_size=3, shard_prompts=3,
                            seed=11, **kw)


def make_gen(world, out_dir, amateur=None, strategy="contrastive", **kw):
    amateur = amateur or {"kind": "small", "model_dir": world["amateur"], "dropout": 0.0}
    return ShardGenerator(expert_dir=world["expert"], amateur=amateur, strategy=strategy,
                          generation=gen_config(**kw), prompts_path=str(world["root"] / "prompts.parquet"),
                          out_dir=str(out_dir), tokenizer_dir=world["tok"])


def batch(*shards):
    return {"shard_id": np.array([s["shard_id"] for s in shards]),
            "start": np.array([s["start"] for s in shards]),
            "end": np.array([s["end"] for s in shards])}


def test_make_prompts(world):
    assert world["info"] == {"prompts": 7}
    t = pq.read_table(world["root"] / "prompts.parquet")
    assert t.column_names == ["prompt_id", "doc_id", "prompt"]
    assert t.schema.field("prompt").type == pa.list_(pa.int32())
    assert t.column("prompt_id").to_pylist() == list(range(7))
    first = world["texts"][0].split()
    ids = [4 + WORDS.index(w) for w in first]
    assert t.column("prompt").to_pylist()[0] == [1] + ids[:4]
    assert [len(p) for p in t.column("prompt").to_pylist()] == [4, 5, 5, 5, 5, 5, 5]


def test_row_seed_is_stable():
    assert row_seed(0, 0, 0) == 3649034661406903291
    assert row_seed(42, 7, 3) == 8034490528740248528
    assert row_seed(0, 0, 1) != row_seed(0, 0, 0) != row_seed(1, 0, 0)
    assert 0 <= row_seed(5, 123456, 7) < 2 ** 63


def test_shard_plan_and_leading_tokens():
    assert shard_plan(7, 3) == [{"shard_id": 0, "start": 0, "end": 3},
                                {"shard_id": 1, "start": 3, "end": 6},
                                {"shard_id": 2, "start": 6, "end": 7}]
    assert shard_plan(0, 3) == []
    assert leading_tokens({0: 10, 1: 10, 2: 10}, 3) == 30
    assert leading_tokens({0: 10, 2: 10}, 3) == 10  # shard 1 missing: shard 2 is not leading
    assert leading_tokens({1: 10}, 3) == 0
    assert leading_tokens({}, 0) == 0


def test_an_actor_runs_enough_shards_at_once_to_keep_its_batch_full():
    # a shard of at least a batch: one decoding, one queued behind it (the demo, sweeps/paper.yaml)
    assert shards_per_actor(32, 64) == shards_per_actor(1536, 4096) == shards_per_actor(8, 8) == 2
    # smaller shards end together when rows are equally long: a second batch's worth is queued
    # (an H100 ran 768-row shards at batch 1536 two at a time at 0.78 of the engine alone)
    assert shards_per_actor(1536, 768) == 4 and shards_per_actor(1536, 700) == 6
    assert shards_per_actor(1536, 8) == MAX_SHARDS_PER_ACTOR


def test_shards_resume_finalize_and_determinism(world, tmp_path, monkeypatch):
    plan = shard_plan(7, 3)
    out = tmp_path / "a"
    gen = make_gen(world, out)
    res = gen(batch(plan[0]))
    assert res["shard_id"].tolist() == [0] and res["rows"].tolist() == [6]
    assert shards_done(out) == {0}

    t = pq.read_table(out / "shards" / "shard_00000.parquet")
    assert t.column_names == ["prompt_id", "continuation", "tokens", "new_tokens", "text", "eos",
                              "head_size_mean", "expert_nll_mean", "amateur_nll_mean",
                              "contaminated"]
    assert t.column("prompt_id").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert t.column("continuation").to_pylist() == [0, 1] * 3
    prompts = pq.read_table(world["root"] / "prompts.parquet").column("prompt").to_pylist()
    rows = t.to_pylist()
    for r in rows:
        p = prompts[r["prompt_id"]]
        assert r["tokens"][: len(p)] == p and len(r["tokens"]) == len(p) + r["new_tokens"]
        assert 1 <= r["new_tokens"] <= 10
        assert r["eos"] == (r["tokens"][-1] == 2)
        assert "<s>" not in r["text"]
    assert res["new_tokens"].tolist() == [sum(r["new_tokens"] for r in rows)]
    manifest = json.loads((out / "shards" / "shard_00000.json").read_text())
    assert manifest["rows"] == 6 and len(manifest["sha256"]) == 64

    # resume: a committed shard is skipped without generating
    import cdray.decode.engine

    def boom(*a, **k):
        raise AssertionError("committed shard regenerated")

    monkeypatch.setattr(cdray.decode.engine.Decoder, "generate", boom)
    again = gen(batch(plan[0]))
    assert again["rows"].tolist() == [6] and again["new_tokens"].tolist() == res["new_tokens"].tolist()
    monkeypatch.undo()

    gen(batch(plan[1], plan[2]))
    assert shards_done(out) == {0, 1, 2}

    # determinism: a fresh generator in another directory writes the same bytes
    out_b = tmp_path / "b"
    make_gen(world, out_b)(batch(*plan))
    for i in range(3):
        name = f"shard_{i:05d}.parquet"
        assert (out / "shards" / name).read_bytes() == (out_b / "shards" / name).read_bytes()

    # finalize under a budget: the row crossing it is kept, later rows dropped
    all_rows = [r for i in range(3)
                for r in pq.read_table(out / "shards" / f"shard_{i:05d}.parquet").to_pylist()]
    counts = [r["new_tokens"] for r in all_rows]
    budget = sum(counts[:7]) - 1  # crossed by the 7th row (in shard 1)
    stats = finalize_corpus(out, 3, budget)
    corpus = pq.read_table(out / "corpus.parquet")
    assert corpus.num_rows == 7 and stats["rows"] == 7
    assert corpus.to_pylist() == all_rows[:7]
    assert stats["new_tokens"] == sum(counts[:7]) and stats["budget_reached"]
    assert stats["shards_used"] == 2
    assert stats["tokens_total"] == sum(len(r["tokens"]) for r in all_rows[:7])
    assert stats["eos_rate"] == pytest.approx(np.mean([r["eos"] for r in all_rows[:7]]))
    assert stats["mean_new_tokens"] == pytest.approx(sum(counts[:7]) / 7)

    big = finalize_corpus(out, 3, 10 ** 9)
    assert big["rows"] == 14 and not big["budget_reached"] and big["shards_used"] == 3

    # a tampered shard is refused, naming the file
    path = out / "shards" / "shard_00001.parquet"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="shard_00001.parquet"):
        finalize_corpus(out, 3, 10 ** 9)
    path.unlink()
    with pytest.raises(ValueError, match="shard_00001.parquet"):
        finalize_corpus(out, 3, 10 ** 9)


def test_generate_stage_stops_once_the_leading_shards_hold_the_budget(world, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cdray.config import SweepConfig
    from cdray.dag import builders as stages

    g = gen_config(token_budget=1)
    kwargs = dict(expert_dir=world["expert"], strategy="contrastive",
                  amateur={"kind": "small", "model_dir": world["amateur"], "dropout": 0.0},
                  generation=g, prompts_path=str(world["root"] / "prompts.parquet"),
                  tokenizer_dir=world["tok"])
    monkeypatch.setattr(stages, "generator_kwargs",  # the run's generation settings, as the real one does
                        lambda node, run, store, out: {**kwargs, "generation": run.generation, "out_dir": str(out)})
    calls = []

    def execute(kw, shards, enough):
        calls.append([s["shard_id"] for s in shards])
        stages._execute_in_process(kw, shards, enough)

    node = SimpleNamespace(label="test")
    first = tmp_path / "first"
    stats = stages.build_generate(node, SweepConfig(generation=g), None, first, execute=execute)
    # one pass over every shard, stopped after shard 0 met the budget of 1 token
    assert calls == [[0, 1, 2]] and shards_done(first) == {0}
    assert stats["budget_reached"] and stats["shards_used"] == 1

    # a budget past shard 0: the pass stops at shard 1, and a re-run generates nothing
    tokens0 = committed_tokens(first)[0]
    g2 = config.parse_section(GenerationConfig, {**config.to_dict(g), "token_budget": tokens0 + 1},
                              "generation")
    calls.clear()
    figures = []
    stages.build_generate(node, SweepConfig(generation=g2), None, first, execute=execute,
                          progress=figures.append)
    assert calls == [[1, 2]] and shards_done(first) == {0, 1}
    # reported as shard 1 commits: shards committed so far, what the leading ones hold
    tokens = committed_tokens(first)
    assert [(f["shards"], f["leading_tokens"]) for f in figures] == [(2, tokens[0] + tokens[1])]
    assert figures[0]["tokens_per_s"] > 0
    calls.clear()
    stages.build_generate(node, SweepConfig(generation=g2), None, first, execute=execute)
    assert calls == []

    # an executor that commits nothing is an error, not a loop
    with pytest.raises(RuntimeError, match="no shard was committed"):
        stages.build_generate(node, SweepConfig(generation=g), None, tmp_path / "none",
                              execute=lambda kw, shards, enough: None)


def test_generate_stage_counts_only_kept_rows_when_dropping_contaminated(world, tmp_path,
                                                                        monkeypatch):
    from types import SimpleNamespace

    from cdray.config import SweepConfig
    from cdray.dag import builders as stages

    plan = shard_plan(7, 3)
    probe = tmp_path / "probe"
    make_gen(world, probe)(batch(plan[0]))
    rows0 = pq.read_table(probe / "shards" / "shard_00000.parquet").to_pylist()
    # an eval split holding shard 0's continuations flags its rows of 3 tokens or more
    texts = [" ".join(WORDS[t - 4] for t in r["tokens"][-r["new_tokens"]:] if t >= 4) for r in rows0]
    pq.write_table(pa.table({"text": texts}), tmp_path / "eval.parquet")
    raw0 = sum(r["new_tokens"] for r in rows0)
    g = gen_config(token_budget=raw0, decontaminate_n=3, drop_contaminated=True)
    kwargs = dict(expert_dir=world["expert"], strategy="contrastive",
                  amateur={"kind": "small", "model_dir": world["amateur"], "dropout": 0.0},
                  generation=g, prompts_path=str(world["root"] / "prompts.parquet"),
                  tokenizer_dir=world["tok"], eval_parquet=str(tmp_path / "eval.parquet"))
    monkeypatch.setattr(stages, "generator_kwargs",
                        lambda node, cfg, store, out: {**kwargs, "out_dir": str(out)})
    out = tmp_path / "dropping"
    stats = stages.build_generate(SimpleNamespace(label="test"), SweepConfig(generation=g), None, out)
    clean = committed_tokens(out, "clean_tokens")
    assert clean[0] < raw0  # shard 0 alone holds the budget only before its flagged rows go
    assert 1 in clean and stats["contaminated_dropped"] > 0
    assert stats["budget_reached"] == (sum(clean.values()) >= raw0)


def test_a_write_stopped_midway_leaves_nothing_in_the_artifact(tmp_path):
    """The stage stops its actor pool at the budget, maybe mid-write: a shard's temporaries are
    neither committed shards nor files of the stage's artifact."""
    from cdray.common.files import temporary_path
    from cdray.dag.artifacts import artifact_files as _artifact_files

    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("shard_00003.parquet", "shard_00003.json"):
        temporary_path(shards / name).write_text("half written")
    assert _artifact_files(tmp_path) == [] and shards_done(tmp_path) == set()


def test_finalize_uses_leading_committed_shards_only(world, tmp_path):
    plan = shard_plan(7, 3)
    out = tmp_path / "gap"
    make_gen(world, out, amateur={"kind": "none"}, strategy="no_contrast")(batch(plan[0], plan[2]))
    stats = finalize_corpus(out, 3, 10 ** 9)
    assert stats["shards_used"] == 1 and stats["rows"] == 6


def test_dropout_and_none_amateurs(world, tmp_path):
    plan = shard_plan(7, 3)
    g = make_gen(world, tmp_path / "drop", amateur={"kind": "dropout", "model_dir": None,
                                                    "dropout": 0.3})
    # the DROP amateur is the expert's own weights, stacked with it, dropping only in its half
    assert [grp.G for grp in g.decoder.groups] == [2]
    assert g.decoder.groups[0].dropout == [0.0, pytest.approx(0.3)]
    assert g(batch(plan[2]))["rows"].tolist() == [2]
    with pytest.raises(ValueError, match="amateur"):
        make_gen(world, tmp_path / "x", amateur={"kind": "none"}, strategy="contrastive")


def test_vocab_mismatch_names_amateur_dir(world, tmp_path):
    with pytest.raises(ValueError, match="bad_vocab"):
        make_gen(world, tmp_path / "v", amateur={"kind": "early", "model_dir": world["bad_vocab"],
                                                 "dropout": 0.0})


def test_paper_compat_switch():
    g = config.parse_section(GenerationConfig, {"paper_compat": True}, "generation")
    g.validate("generation")
    assert (g.max_new_tokens, g.stop_at_eos, g.prompt_tokens, g.continuations) == (400, False, 20, 8)
    assert g.decoding.penalty == -20.0
    bad = config.parse_section(GenerationConfig, {"paper_compat": True, "max_new_tokens": 100},
                               "generation")
    with pytest.raises(config.ConfigError, match="generation.max_new_tokens"):
        bad.validate("generation")
    bad = config.parse_section(GenerationConfig, {"paper_compat": True,
                                                  "decoding": {"penalty": "-inf"}}, "generation")
    with pytest.raises(config.ConfigError, match="generation.decoding.penalty"):
        bad.validate("generation")
    # the default stops at EOS
    assert GenerationConfig().stop_at_eos and not GenerationConfig().paper_compat
    with pytest.raises(config.ConfigError, match="drop_contaminated"):
        GenerationConfig(decontaminate_n=0, drop_contaminated=True).validate("generation")


def test_shard_telemetry_and_decontamination(world, tmp_path):
    plan = shard_plan(7, 3)
    out = tmp_path / "clean"
    make_gen(world, out, decontaminate_n=3)(batch(*plan))
    manifest = json.loads((out / "shards" / "shard_00000.json").read_text())
    stats = manifest["stats"]
    for k in ("distinct_2", "distinct_3", "distinct_4", "diversity", "repetition_rate",
              "head_size_mean", "expert_nll_mean", "amateur_nll_mean", "eos_rate", "length_hist"):
        assert k in stats, k
    assert stats["diversity"] == pytest.approx(stats["distinct_2"] * stats["distinct_3"]
                                               * stats["distinct_4"])
    assert sum(stats["length_hist"]["counts"]) == manifest["rows"]
    assert stats["contamination_rate"] == 0.0 and manifest["tokens_per_s"] > 0
    assert manifest["row_steps"] == manifest["new_tokens"] <= manifest["slot_steps"]
    assert stats["slot_utilization"] == manifest["row_steps"] / manifest["slot_steps"]
    rows = pq.read_table(out / "shards" / "shard_00001.parquet").to_pylist()
    long_rows = [r for r in rows if r["new_tokens"] >= 6]
    assert long_rows
    # an eval split holding one generated continuation flags exactly the rows sharing a 3-gram
    tok = __import__("cdray.data.tokenizer", fromlist=["load_tokenizer"]).load_tokenizer(world["tok"])
    prompt_len = len(long_rows[0]["tokens"]) - long_rows[0]["new_tokens"]
    leaked = tok.decode(long_rows[0]["tokens"][prompt_len:], skip_special_tokens=True)
    pq.write_table(pa.table({"text": [leaked]}), tmp_path / "eval.parquet")
    dirty = tmp_path / "dirty"
    g = ShardGenerator(expert_dir=world["expert"],
                       amateur={"kind": "small", "model_dir": world["amateur"], "dropout": 0.0},
                       strategy="contrastive", generation=gen_config(decontaminate_n=3),
                       prompts_path=str(world["root"] / "prompts.parquet"), out_dir=str(dirty),
                       tokenizer_dir=world["tok"], eval_parquet=str(tmp_path / "eval.parquet"))
    g(batch(*plan))
    flagged = [r for i in range(3)
               for r in pq.read_table(dirty / "shards" / f"shard_{i:05d}.parquet").to_pylist()
               if r["contaminated"]]
    assert any(r["tokens"] == long_rows[0]["tokens"] for r in flagged)
    # a corpus that drops flagged rows counts only the others toward its budget
    clean = committed_tokens(dirty, "clean_tokens")
    for i in range(3):
        rows_i = pq.read_table(dirty / "shards" / f"shard_{i:05d}.parquet").to_pylist()
        assert clean[i] == sum(r["new_tokens"] for r in rows_i if not r["contaminated"])
    assert sum(clean.values()) < sum(committed_tokens(dirty).values())
    kept = finalize_corpus(dirty, 3, 10 ** 9, drop_contaminated=True, tokenizer_dir=world["tok"],
                           max_new_tokens=10)
    assert kept["contaminated_dropped"] == len(flagged) and kept["rows"] == 14 - len(flagged)
    assert kept["contamination_rate"] == pytest.approx(len(flagged) / 14)
    corpus = pq.read_table(dirty / "corpus.parquet")
    assert not any(corpus.column("contaminated").to_pylist())
    for k in ("distinct_2", "diversity", "repetition_rate", "expert_nll_mean", "amateur_nll_mean"):
        assert kept[k] is not None and kept[k] >= 0, k
    # the corpus's batch occupancy pools the shards' slot counts
    metas = [json.loads((dirty / "shards" / f"shard_{i:05d}.json").read_text()) for i in range(3)]
    assert kept["slot_utilization"] == (sum(m["row_steps"] for m in metas)
                                        / sum(m["slot_steps"] for m in metas))


def test_paper_compat_rows_run_full_length(world, tmp_path):
    plan = shard_plan(7, 3)
    out = tmp_path / "paper"
    make_gen(world, out, stop_at_eos=False)(batch(plan[2]))
    rows = pq.read_table(out / "shards" / "shard_00002.parquet").to_pylist()
    assert all(r["new_tokens"] == 10 and not r["eos"] for r in rows)


@pytest.mark.slow
def test_ray_data_actors_and_batch_size_do_not_change_shards(world, tmp_path, ray_session):
    from cdray.shell.ray_exec import generate_with_ray_data

    plan = shard_plan(7, 2)
    outs = {}
    for name, actors, bs in (("one", 1, 3), ("two", 2, 5)):
        g = dataclasses.replace(gen_config(actors=actors, actor_cpus=0.5), batch_size=bs)
        kwargs = dict(expert_dir=world["expert"], strategy="contrastive",
                      amateur={"kind": "early", "model_dir": world["amateur_same"], "dropout": 0.0},
                      generation=g, prompts_path=str(world["root"] / "prompts.parquet"),
                      out_dir=str(tmp_path / name), tokenizer_dir=world["tok"])
        generate_with_ray_data(kwargs, plan)
        outs[name] = tmp_path / name
    for s in plan:
        f = f"shard_{s['shard_id']:05d}.parquet"
        assert (outs["one"] / "shards" / f).read_bytes() == (outs["two"] / "shards" / f).read_bytes()

    # stopped at the budget: the call returns once the driver has seen two committed shards
    # (shards this small may all commit before it sees the second one). An actor runs two
    # shards at once, so they may come back in either order
    seen = []
    kwargs["out_dir"] = str(tmp_path / "stopped")
    kwargs["generation"] = dataclasses.replace(g, actors=1)
    generate_with_ray_data(kwargs, plan, lambda c: seen.append(c["shard_id"]) or len(seen) == 2)
    assert len(seen) == 2 and set(seen) <= shards_done(tmp_path / "stopped")
    # a write an actor was stopped in leaves at most a temporary the store leaves out
    from cdray.dag.artifacts import artifact_files as _artifact_files

    names = {rel for rel, _ in _artifact_files(tmp_path / "stopped")}
    assert all(n.endswith((".parquet", ".json")) for n in names), names


def test_shards_run_at_once_share_a_batch_and_write_the_bytes_of_shards_run_alone(world, tmp_path):
    """Ray Data runs calls of one actor at once (generation.shards_per_actor): their rows share
    the actor's batch, and each shard still commits exactly what it would alone."""
    import threading

    plan = shard_plan(7, 3)
    alone = tmp_path / "alone"
    gen = make_gen(world, alone)
    for shard in plan:
        gen(batch(shard))
    together = tmp_path / "together"
    gen = make_gen(world, together)
    outs, errors = {}, []

    def call(shard):
        try:
            outs[shard["shard_id"]] = gen(batch(shard))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(s,)) for s in plan]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.perf_counter() - t0
    assert not errors and sorted(outs) == [0, 1, 2]
    shares = []
    for i in range(3):
        a = json.loads((alone / "shards" / f"shard_{i:05d}.json").read_text())
        b = json.loads((together / "shards" / f"shard_{i:05d}.json").read_text())
        assert a["sha256"] == b["sha256"] and a["new_tokens"] == b["new_tokens"]
        assert int(outs[i]["new_tokens"][0]) == b["new_tokens"]
        # a shard's rate is over its share of the batch's time, not its span beside the others
        assert 0 < b["decode_seconds"] <= b["seconds"]
        assert b["tokens_per_s"] == pytest.approx(b["new_tokens"] / b["decode_seconds"], rel=0.05)  # rounded
        shares.append(b["decode_seconds"])
    assert sum(shares) <= wall + 0.01  # rounded to ms
