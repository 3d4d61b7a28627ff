"""Tests of cdray.decode.scores: hand-computed scores, truncation, sampling and the two-model loop."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdray.config import DecodingConfig
from cdray.decode.engine import Decoder
from cdray.decode.sample import generate
from cdray.decode.scores import NgramBlocker, head_size, sample_inverse_cdf, strategy_scores
from cdray.decode.truncation import truncate

torch.set_num_threads(1)

ZG = [2.0, 1.0, 0.0, -1.0, -3.0]
ZB = [1.0, 1.0, 1.0, 0.0, 0.0]


def _log_softmax(z):
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


def _t(values):
    return torch.tensor([values], dtype=torch.float32)


def _close(actual, expected, tol=1e-5):
    actual = actual.squeeze(0).tolist()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if math.isinf(e):
            assert a == e
        else:
            assert a == pytest.approx(e, abs=tol)


# pG = [0.641, 0.236, 0.0868, 0.0319, 0.0043]; alpha * max pG = 0.0641, so V_head = {0, 1, 2}
LPG = _log_softmax(ZG)
LPB = _log_softmax(ZB)
HEAD = [0, 1, 2]


def test_hand_computed_head():
    d = DecodingConfig(alpha=0.1)
    assert head_size(_t(ZG), d).tolist() == [3]


def test_no_contrast_is_raw_logits_over_temperature():
    d = DecodingConfig(temperature=2.0)
    _close(strategy_scores(_t(ZG), None, "no_contrast", d), [z / 2.0 for z in ZG])


@pytest.mark.parametrize("penalty", [-20.0, -math.inf])
def test_no_contrast_vhead(penalty):
    d = DecodingConfig(alpha=0.1, penalty=penalty)
    expected = [LPG[0], LPG[1], LPG[2], penalty, penalty]
    _close(strategy_scores(_t(ZG), None, "no_contrast_vhead", d), expected)


@pytest.mark.parametrize("penalty", [-20.0, -math.inf])
def test_contrastive(penalty):
    d = DecodingConfig(alpha=0.1, lam=1.0, penalty=penalty)
    expected = [LPG[i] - LPB[i] for i in HEAD] + [penalty, penalty]
    _close(strategy_scores(_t(ZG), _t(ZB), "contrastive", d), expected)


def test_contrastive_lambda_and_temperature():
    d = DecodingConfig(alpha=0.1, lam=0.5, temperature=2.0, penalty=-20.0)
    lpg = _log_softmax([z / 2 for z in ZG])
    lpb = _log_softmax([z / 2 for z in ZB])
    pg = [math.exp(v) for v in lpg]
    head = [i for i in range(5) if pg[i] > 0.1 * max(pg)]
    expected = [lpg[i] - 0.5 * lpb[i] if i in head else -20.0 for i in range(5)]
    _close(strategy_scores(_t(ZG), _t(ZB), "contrastive", d), expected)


def test_contrastive_tail():
    d = DecodingConfig(alpha=0.1, lam=1.0, penalty=-20.0)
    cd = [LPG[i] - LPB[i] for i in HEAD]
    c = min(cd) - math.log(0.1 * math.exp(LPG[0]))
    expected = cd + [LPG[3] + c, LPG[4] + c]
    scores = strategy_scores(_t(ZG), _t(ZB), "contrastive_tail", d)
    _close(scores, expected)
    # the tail sits strictly below the head and keeps the expert's ratios
    s = scores.squeeze(0).tolist()
    assert max(s[3:]) < min(s[:3])
    assert s[3] - s[4] == pytest.approx(LPG[3] - LPG[4], abs=1e-5)


def test_contrastive_needs_amateur():
    with pytest.raises(ValueError):
        strategy_scores(_t(ZG), None, "contrastive", DecodingConfig())
    with pytest.raises(ValueError):
        strategy_scores(_t(ZG), None, "beam", DecodingConfig())


def test_head_boundary_is_strict():
    # softmax([ln 4, 0, 0, 0, 0]) = [0.5, 0.125, ...] exactly in fp32: tokens 1..4 sit at 0.25 * max
    z = _t([math.log(4.0), 0.0, 0.0, 0.0, 0.0])
    p = torch.softmax(z, dim=-1)
    assert p[0, 1].item() == 0.25 * p[0, 0].item()  # precondition: exactly on the boundary
    assert head_size(z, DecodingConfig(alpha=0.25)).tolist() == [1]
    assert head_size(z, DecodingConfig(alpha=0.2499)).tolist() == [5]
    s = strategy_scores(z, None, "no_contrast_vhead", DecodingConfig(alpha=0.25, penalty=-7.0))
    assert s.squeeze(0).tolist()[1:] == [-7.0] * 4


def test_top_k_on_cd_scores_with_small_head_is_a_no_op():
    d = DecodingConfig(alpha=0.1, lam=1.0, penalty=-20.0)
    scores = strategy_scores(_t(ZG), _t(ZB), "contrastive", d)
    cd = [LPG[i] - LPB[i] for i in HEAD]
    # |V_head| = 3 < k = 4: the 4th largest score is the penalty, and ties at it are kept
    _close(truncate(scores, DecodingConfig(top_k=4, top_p=None)), cd + [-20.0, -20.0])
    _close(truncate(scores, DecodingConfig(top_k=50, top_p=None)), cd + [-20.0, -20.0])
    # k = 3 keeps exactly the head; k = 2 keeps the two largest CD scores
    _close(truncate(scores, DecodingConfig(top_k=3, top_p=None)), cd + [-math.inf, -math.inf])
    order = sorted(range(3), key=lambda i: -cd[i])
    expected = [cd[i] if i in order[:2] else -math.inf for i in range(3)] + [-math.inf] * 2
    _close(truncate(scores, DecodingConfig(top_k=2, top_p=None)), expected)


def test_top_k_plain():
    _close(truncate(_t([0.5, 3.0, 1.0, 2.0]), DecodingConfig(top_k=2, top_p=None)), [-math.inf, 3.0, -math.inf, 2.0])


def test_top_p():
    scores = torch.log(_t([0.5, 0.25, 0.15, 0.1]))
    lp = [math.log(v) for v in [0.5, 0.25, 0.15, 0.1]]
    # mass before each token: 0, 0.5, 0.75, 0.9 -> p=0.7 keeps two, p=0.8 keeps three
    _close(truncate(scores, DecodingConfig(top_k=None, top_p=0.7)), [lp[0], lp[1], -math.inf, -math.inf])
    _close(truncate(scores, DecodingConfig(top_k=None, top_p=0.8)), [lp[0], lp[1], lp[2], -math.inf])
    _close(truncate(scores, DecodingConfig(top_k=None, top_p=0.3)), [lp[0], -math.inf, -math.inf, -math.inf])
    # unsorted input: truncation follows probability, not index
    perm = torch.log(_t([0.1, 0.5, 0.15, 0.25]))
    _close(truncate(perm, DecodingConfig(top_k=None, top_p=0.7)), [-math.inf, math.log(0.5), -math.inf, math.log(0.25)])


def test_top_k_then_top_p():
    scores = torch.log(_t([0.4, 0.3, 0.2, 0.1]))
    # top-2 renormalises to [4/7, 3/7]; top_p=0.5 then keeps only the first
    _close(truncate(scores, DecodingConfig(top_k=2, top_p=0.5)), [math.log(0.4), -math.inf, -math.inf, -math.inf])


def test_inverse_cdf_picks_tokens():
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]] * 6))
    u = torch.tensor([0.0, 0.49, 0.6, 0.8, 0.95, 0.9999999])
    assert sample_inverse_cdf(scores, u).tolist() == [0, 0, 1, 2, 3, 3]


def test_inverse_cdf_never_picks_zero_mass():
    scores = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0, -math.inf]] * 3)
    u = torch.tensor([0.0, 0.5, 0.99999994])
    assert sample_inverse_cdf(scores, u).tolist() == [1, 3, 3]


def test_inverse_cdf_target_at_the_total_takes_the_last_token_with_mass():
    # u = 1 puts the target exactly at the total, as round-off can: the search runs off the end
    # (index V) and only that row falls back to its last positive-probability token
    scores = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0, -math.inf],
                           [0.0, 0.0, 0.0, -math.inf, -math.inf],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert sample_inverse_cdf(scores, torch.tensor([1.0, 0.1, 1.0])).tolist() == [3, 0, 4]


def test_inverse_cdf_matches_distribution():
    probs = [0.4, 0.3, 0.2, 0.05, 0.05]
    n = 40000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g)
    tokens = sample_inverse_cdf(torch.log(torch.tensor([probs] * n)), u)
    counts = torch.bincount(tokens, minlength=5).double()
    expected = torch.tensor(probs, dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.0  # 4 dof: p ~ 5e-4


# ---------------------------------------------------------------- the loop with tiny models


def tiny_llama(seed: int, *, sharpen: float = 1.0, attention_dropout: float = 0.0, layers: int = 2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, attention_dropout=attention_dropout)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # peaked distributions make V_head non-trivial
    return model


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(0, sharpen=40.0), tiny_llama(1, sharpen=40.0)


@pytest.mark.parametrize("strategy", ["no_contrast", "contrastive"])
def test_left_padding_is_invisible(pair, strategy):
    expert, amateur = pair
    d = DecodingConfig(alpha=0.1)
    short, long = [1, 5, 6], [1, 9, 10, 11, 12, 13, 14, 15, 16]
    kw = dict(max_new_tokens=24, stop_at_eos=False)
    alone = generate(expert, amateur, [short], [7], strategy, d, **kw)[0]
    batched = generate(expert, amateur, [long, short], [8, 7], strategy, d, **kw)
    assert batched[1].tokens == alone.tokens
    assert batched[1].head_size_mean == pytest.approx(alone.head_size_mean)
    assert len(alone.tokens) == 24
    long_alone = generate(expert, amateur, [long], [8], strategy, d, **kw)[0]
    assert batched[0].tokens == long_alone.tokens


def test_chunking_does_not_change_rows(pair):
    expert, amateur = pair
    d = DecodingConfig(alpha=0.1, top_k=20)
    prompts = [[1, 4], [1, 7, 8, 9], [1, 20, 21]]
    kw = dict(max_new_tokens=16, stop_at_eos=True)
    one = generate(expert, amateur, prompts, [1, 2, 3], "contrastive_tail", d, batch_size=1, **kw)
    all_ = generate(expert, amateur, prompts, [1, 2, 3], "contrastive_tail", d, batch_size=3, **kw)
    assert [r.tokens for r in one] == [r.tokens for r in all_]
    # a different seed gives a different row
    other = generate(expert, amateur, prompts[:1], [99], "contrastive_tail", d, **kw)
    assert other[0].tokens != one[0].tokens
    assert 1 <= one[0].head_size_mean <= 64


def test_eos_stop():
    expert = tiny_llama(3)  # near-uniform: EOS (id 2) turns up within a few dozen steps
    d = DecodingConfig()
    prompts = [[1, 10 + i] for i in range(8)]
    seeds = list(range(8))
    stopped = generate(expert, None, prompts, seeds, "no_contrast", d, max_new_tokens=150,
                       stop_at_eos=True)
    full = generate(expert, None, prompts, seeds, "no_contrast", d, max_new_tokens=150,
                    stop_at_eos=False)
    assert any(r.stopped_at_eos for r in stopped)
    for s, f in zip(stopped, full):
        assert len(f.tokens) == 150 and not f.stopped_at_eos
        if s.stopped_at_eos:
            assert s.tokens[-1] == 2 and 2 not in s.tokens[:-1]
            assert f.tokens[: len(s.tokens)] == s.tokens  # same uniforms, causal model
        else:
            assert s.tokens == f.tokens


def _hf_reference(expert, amateur, prompt, seed, strategy, d, max_new_tokens):
    """The paper's way: HF models with their own dynamic caches, one row, no EOS, fp32."""
    from transformers import DynamicCache

    u = torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(seed))
    models = [expert] + ([amateur] if amateur is not None else [])
    caches = [DynamicCache(config=m.config) for m in models]
    ids, out = torch.tensor([prompt]), []
    with torch.no_grad():
        for t in range(max_new_tokens):
            logits = [m(input_ids=ids, cache=c, use_cache=True).logits[:, -1].float()
                      for m, c in zip(models, caches)]
            scores = truncate(strategy_scores(logits[0], logits[1] if amateur else None, strategy, d), d)
            tok = sample_inverse_cdf(scores, u[t:t + 1])
            out.append(int(tok))
            ids = tok[:, None]
    return out


@pytest.mark.parametrize("strategy,engine", [("contrastive", "auto"), ("contrastive", "separate"),
                                             ("no_contrast", "auto"),
                                             ("contrastive_tail", "auto")])
def test_engine_matches_hf_reference_loop(pair, strategy, engine):
    expert, amateur = pair
    d = DecodingConfig(alpha=0.1, top_p=0.95)
    prompts = [[1, 5, 6], [1, 9, 10, 11, 12, 13], [1, 7]]
    got = generate(expert, amateur, prompts, [3, 4, 5], strategy, d, max_new_tokens=12,
                   stop_at_eos=False, batch_size=2, engine=engine)
    for p, s, r in zip(prompts, [3, 4, 5], got):
        assert r.tokens == _hf_reference(expert, amateur, p, s, strategy, d, 12)


def test_small_amateur_runs_separately(pair):
    expert, _ = pair
    small = tiny_llama(4, sharpen=40.0, layers=1)
    d = DecodingConfig(alpha=0.1)
    got = generate(expert, small, [[1, 5, 6]], [3], "contrastive", d, max_new_tokens=10,
                   stop_at_eos=False)
    assert got[0].tokens == _hf_reference(expert, small, [1, 5, 6], 3, "contrastive", d, 10)
    with pytest.raises(ValueError, match="shape"):
        generate(expert, small, [[1, 5]], [0], "contrastive", d, max_new_tokens=2,
                 stop_at_eos=False, engine="stacked")


def test_rows_independent_of_batch_refill_and_cache_length(pair):
    expert, amateur = pair
    d = DecodingConfig(alpha=0.1)
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(9)]
    seeds = [100 + i for i in range(9)]
    kw = dict(max_new_tokens=36, stop_at_eos=True, eos_id=19)  # a frequent EOS makes rows end early
    # long rows cross key steps (from 32 keys on, in 8s on CPU), so steps read different
    # lengths of the cache
    base = generate(expert, amateur, prompts, seeds, "contrastive", d, batch_size=9, max_len=80, **kw)
    assert max(len(p) + len(r.tokens) for p, r in zip(prompts, base)) > 32
    assert any(r.stopped_at_eos for r in base) and not all(r.stopped_at_eos for r in base)
    for bs, refill in [(1, True), (2, True), (4, False), (3, True)]:
        other = generate(expert, amateur, prompts, seeds, "contrastive", d, batch_size=bs,
                         refill=refill, max_len=80, **kw)
        assert [r.tokens for r in other] == [r.tokens for r in base]
        # bit-identical logits: even the float telemetry matches exactly
        assert [r.head_size_mean for r in other] == [r.head_size_mean for r in base]
        assert [r.expert_nll_mean for r in other] == [r.expert_nll_mean for r in base]
        assert [r.amateur_nll_mean for r in other] == [r.amateur_nll_mean for r in base]
    # reversed order: still the same row for the same (prompt, seed)
    rev = generate(expert, amateur, prompts[::-1], seeds[::-1], "contrastive", d, batch_size=4,
                   max_len=80, **kw)
    assert [r.tokens for r in rev[::-1]] == [r.tokens for r in base]
    for r in base:
        assert r.expert_nll_mean > 0 and r.amateur_nll_mean > 0
        assert (r.tokens[-1] == 19) == r.stopped_at_eos and 19 not in r.tokens[:-1]


@pytest.mark.parametrize("batch,refill", [(3, True), (7, False)])
def test_queuing_the_next_step_ahead_changes_no_row(pair, batch, refill):
    # the engine feeds step t+1 before it files step t, so rows that just ended are fed once
    # more; waiting first (look_ahead off) must give the same rows, with refills and shrinking
    expert, amateur = pair
    dec = Decoder(expert, amateur, "contrastive", DecodingConfig(alpha=0.1))
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(7)]
    kw = dict(max_new_tokens=30, stop_at_eos=True, eos_id=19, batch_size=batch, refill=refill,
              max_len=36)
    fed = []
    forward = dec.forward

    def spy(ids, positions, slots=None, max_position=None, **kwargs):
        # the host's count of the largest position is exact (the eager step attends over keys
        # up to it, so one too few would cut a row's context)
        assert max_position == int(positions.max())
        if slots is None:
            fed.append(max_position)
        return forward(ids, positions, slots=slots, max_position=max_position, **kwargs)

    dec.forward = spy
    ahead = dec.generate(prompts, list(range(7)), **kw)
    assert any(r.stopped_at_eos for r in ahead) and not all(r.stopped_at_eos for r in ahead)
    # a finished row's slot is fed at position 0 from the next step on, never past the cache
    assert max(fed) < 36
    dec.look_ahead = False
    waited = dec.generate(prompts, list(range(7)), **kw)
    assert ahead == waited and len(fed) > 40


@pytest.mark.parametrize("n,batch,slots", [(9, 4, 3), (10, 4, 4), (8, 4, 4), (3, 8, 3)])
def test_fixed_length_rows_spread_evenly_over_rounds(pair, n, batch, slots):
    expert, amateur = pair
    dec = Decoder(expert, amateur, "contrastive", DecodingConfig(alpha=0.1))
    prompts = [[1, 4 + i] for i in range(n)]
    rows = dec.generate(prompts, list(range(n)), max_new_tokens=3, stop_at_eos=False,
                        batch_size=batch, max_len=8)
    assert dec.groups[0].k_cache[0].shape[1] == slots
    assert [len(r.tokens) for r in rows] == [3] * n


def test_amateur_not_run_without_contrast(pair):
    expert, _ = pair

    class NotLlama(torch.nn.Module):
        pass

    # the amateur is never touched (not even stacked) by a strategy that ignores it
    out = generate(expert, NotLlama(), [[1, 5]], [0], "no_contrast_vhead", DecodingConfig(),
                   max_new_tokens=4, stop_at_eos=False)
    assert len(out[0].tokens) == 4 and math.isnan(out[0].amateur_nll_mean)
    with pytest.raises(ValueError, match="amateur"):
        generate(expert, None, [[1, 5]], [0], "contrastive", DecodingConfig(), max_new_tokens=4,
                 stop_at_eos=False)


def test_hf_dropout_is_active_only_in_train_mode(tmp_path):
    from cdray.models.llama import load_model

    tiny_llama(5).save_pretrained(tmp_path / "m")
    expert = load_model(tmp_path / "m", dtype=torch.float32, device="cpu").eval()
    amateur = load_model(tmp_path / "m", dtype=torch.float32, device="cpu", attention_dropout=0.5)
    x = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        assert torch.equal(expert(x).logits, expert(x).logits)
        amateur.eval()
        assert torch.equal(amateur(x).logits, expert(x).logits)
        amateur.train()  # HF Llama attention (eager and sdpa) drops only when module.training
        assert not torch.allclose(amateur(x).logits, amateur(x).logits)


def test_engine_dropout_only_in_amateur_and_deterministic(pair):
    from cdray.decode.stacked import StackedLlama

    expert, _ = pair
    ids, pos = torch.tensor([[1, 5, 6, 7, 8, 9]]), torch.arange(6)[None]
    s = StackedLlama([expert, expert], dropout=[0.0, 0.5])
    s.new_cache(1, 16)
    out = s.forward(ids, pos, slots=torch.tensor([0]), seeds=torch.tensor([7]))
    with torch.no_grad():
        ref = expert(ids).logits[0, -1]
    assert torch.allclose(out[0, 0], ref, atol=1e-5)  # the expert half is exact and dropout-free
    assert not torch.allclose(out[1, 0], ref, atol=1e-3)  # the amateur half drops
    again = s.forward(ids, pos, slots=torch.tensor([0]), seeds=torch.tensor([7]))
    other = s.forward(ids, pos, slots=torch.tensor([0]), seeds=torch.tensor([8]))
    assert torch.equal(again, out) and not torch.equal(other[1], out[1])
    # a DROP amateur through generate: rows reproducible and independent of the batch
    d = DecodingConfig(alpha=0.1)
    prompts, seeds = [[1, 5], [1, 6, 7], [1, 8]], [1, 2, 3]
    kw = dict(max_new_tokens=12, stop_at_eos=False, amateur_dropout=0.5, max_len=20)
    a = generate(expert, expert, prompts, seeds, "contrastive", d, batch_size=3, **kw)
    b = generate(expert, expert, prompts, seeds, "contrastive", d, batch_size=1, **kw)
    c = generate(expert, expert, prompts, seeds, "contrastive", d, batch_size=3,
                 **{**kw, "amateur_dropout": 0.0})
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]
    assert not expert.training


@pytest.mark.parametrize("attention", ["auto", "sdpa_efficient", "eager"])
def test_true_position_ids(pair, attention):
    # RoPE is shift-invariant, so check positions directly: logits at a slot equal HF logits of
    # the row alone, for prompts of different lengths prefilled and decoded together, with every
    # way of attending (auto is eager)
    from cdray.decode.stacked import StackedLlama

    expert, amateur = pair
    s = StackedLlama([expert, amateur], attention=attention)
    s.new_cache(2, 12)
    ids = torch.tensor([[1, 9, 10, 11], [1, 5, 3, 3]])
    lens = torch.tensor([4, 2])
    out = s.forward(ids, torch.arange(4).expand(2, 4), slots=torch.arange(2), last=lens - 1)
    step = s.forward(torch.tensor([[20], [21]]), lens[:, None])
    with torch.no_grad():
        for g, model in enumerate((expert, amateur)):
            for r, row in enumerate([[1, 9, 10, 11], [1, 5]]):
                assert torch.allclose(out[g, r], model(torch.tensor([row])).logits[0, -1], atol=1e-5)
                full = torch.tensor([row + [20 + r]])
                assert torch.allclose(step[g, r], model(full).logits[0, -1], atol=1e-5)


def _wide_llama(seed: int):
    # head dim 64 (the paper's), where the attention kernels take other code paths than at 16
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("shape", ["tiny", "wide"])
@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_row_bits_do_not_depend_on_how_much_cache_a_step_reads(pair, attention, shape):
    # a decode step reads the cache up to its longest row (rounded to a key step); a row's
    # logits must not change by one bit with that length, or rows would depend on neighbours
    from cdray.decode.stacked import StackedLlama

    models = list(pair) if shape == "tiny" else [_wide_llama(0), _wide_llama(1)]
    s = StackedLlama(models, attention=attention)
    s.new_cache(3, 203)  # not a multiple of 8: rounded up
    assert s.T == 208
    g = torch.Generator().manual_seed(0)
    for k, v in zip(s.k_cache, s.v_cache):  # stale entries of earlier rows, masked
        k.copy_(torch.randn(k.shape, generator=g))
        v.copy_(torch.randn(v.shape, generator=g))
    ids = torch.tensor([[7], [8], [9]])
    for p in range(0, 200, 7):
        ref = s.forward(ids, torch.tensor([[p], [p], [p]]))[:, 0]
        for q in range(p + 1, 208, 3):
            assert torch.equal(s.forward(ids, torch.tensor([[p], [q], [p]]))[:, 0], ref), (p, q)


def test_unknown_attention_kind_is_refused(pair):
    from cdray.decode.stacked import StackedLlama

    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        StackedLlama([pair[0]], attention="flash")


def test_no_repeat_ngram():
    b = NgramBlocker(2)
    b.reset(0, [1, 5, 6, 5])
    # context ...5: bigrams (5,6) seen, so 6 is banned after 5
    assert b.banned(0) == [6]
    scores = torch.zeros((1, 8))
    out = b.apply(scores)
    assert out[0, 6] == -math.inf and torch.isfinite(out[0, [0, 1, 2, 3, 4, 5, 7]]).all()
    b.push([0], [7])
    assert b.banned(0) == []
    b3 = NgramBlocker(3)
    b3.reset(0, [4, 4, 4])
    assert b3.banned(0) == [4]
    # a row where everything is banned is left alone
    one = NgramBlocker(1)
    one.reset(0, [0, 1])
    assert torch.equal(one.apply(torch.zeros((1, 2))), torch.zeros((1, 2)))


def test_no_repeat_ngram_in_generation(pair):
    expert, amateur = pair
    d = DecodingConfig(alpha=0.1, no_repeat_ngram=2)
    rows = generate(expert, amateur, [[1, 5], [1, 6, 7]], [1, 2], "contrastive", d,
                    max_new_tokens=30, stop_at_eos=False)
    for p, r in zip([[1, 5], [1, 6, 7]], rows):
        seq = p + r.tokens
        grams = list(zip(seq, seq[1:]))
        assert len(grams) == len(set(grams))


def test_plan_batch_size():
    from cdray.decode.engine import plan_batch_size
    from cdray.decode.stacked import StackedLlama

    m = tiny_llama(0)
    g = StackedLlama([m, m])
    per_row = g.kv_bytes_per_row(100) + 8 * 4 * 64
    # K and V, 2 models, 2 layers, 2 heads, head dim 16, 100 positions rounded up to 104, fp32
    assert g.kv_bytes_per_row(100) == 2 * 2 * 2 * 2 * 16 * 104 * 4
    assert plan_batch_size([g], 100, 64, 0.5, "cpu", available=per_row * 20) == 10
    assert plan_batch_size([g], 100, 8, 0.5, "cpu", available=per_row * 20) == 8
    assert plan_batch_size([g], 100, 64, 0.5, "cpu", available=1) == 1
    assert 1 <= plan_batch_size([g], 100, 64, 0.5, "cpu") <= 64


def test_new_cache_frees_the_old_cache_before_allocating(pair, monkeypatch):
    # a generation actor calls generate once per shard: two caches alive at once would double
    # the memory the batch planner budgeted for one
    import weakref

    from cdray.decode.stacked import StackedLlama

    s = StackedLlama(list(pair))
    s.new_cache(2, 16)
    old = weakref.ref(s.k_cache[0])
    freed_when_allocating = []
    zeros = torch.zeros

    def watching_zeros(*args, **kwargs):
        freed_when_allocating.append(old() is None)
        return zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", watching_zeros)
    s.new_cache(2, 16)
    assert freed_when_allocating and all(freed_when_allocating)


def test_usage_counts_the_slots_computed_and_the_tokens_sampled(pair):
    expert, amateur = pair
    dec = Decoder(expert, amateur, "contrastive", DecodingConfig(alpha=0.1))
    prompts = [[1, 4 + i, 30 - i] for i in range(7)]
    kw = dict(max_new_tokens=30, stop_at_eos=True, eos_id=19, max_len=36)
    # one slot for all rows: every step that slot samples a token
    usage = {}
    rows = dec.generate(prompts, list(range(7)), batch_size=1, usage=usage, **kw)
    assert usage["row_steps"] == sum(len(r.tokens) for r in rows) == usage["slot_steps"]
    # all rows in one batch, no refill: slots of rows that ended at EOS idle until the batch
    # shrinks (at half), so the batch is less than full
    usage = {}
    rows = dec.generate(prompts, list(range(7)), batch_size=7, refill=False, usage=usage, **kw)
    lengths = sorted(len(r.tokens) for r in rows)
    assert lengths[0] < lengths[-1]
    assert usage["row_steps"] == sum(lengths) < usage["slot_steps"] <= 7 * lengths[-1]
    # fixed-length rows in even rounds keep every slot busy
    usage = {}
    dec.generate(prompts + [[1, 2]], list(range(8)), max_new_tokens=5, stop_at_eos=False,
                 batch_size=4, max_len=36, usage=usage)
    assert usage == {"slot_steps": 40, "row_steps": 40}


@pytest.mark.parametrize("kv_cache", ["model", "fp8"])
def test_rows_from_more_join_the_batch_and_come_out_as_in_one_call(pair, kv_cache):
    expert, amateur = pair
    # fp8: the cache is rebuilt through bytes as the batch shrinks and grows back
    dec = Decoder(expert, amateur, "contrastive", DecodingConfig(alpha=0.1), kv_cache=kv_cache)
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(9)]
    kw = dict(max_new_tokens=30, stop_at_eos=True, eos_id=19, max_len=36)
    base = dec.generate(prompts, list(range(9)), batch_size=4, **kw)
    widths = []  # slots of each decode step
    forward = dec.forward

    def spy(ids, positions, slots=None, **kwargs):
        if slots is None:
            widths.append(ids.shape[0])
        return forward(ids, positions, slots=slots, **kwargs)

    dec.forward = spy
    later = [[(prompts[i], i) for i in (2, 3, 4)], [], [(prompts[i], i) for i in range(5, 7)]]
    asked, got = [], {}
    last = [(prompts[8], 8), (prompts[7], 7)]

    def more():
        asked.append(len(asked))
        if later:
            return later.pop(0)
        if last and widths[-1] < 4:
            # the last rows come only once the drain has shrunk the batch: it grows back
            return [last.pop()]
        return []

    usage = {}
    out = dec.generate(prompts[:2], [0, 1], batch_size=4, more=more, usage=usage,
                       on_row=lambda r, res: got.__setitem__(r, res), **kw)
    # numbered on from the first call's rows; none kept in the return value
    assert out == [] and sorted(got) == list(range(9))
    assert [got[r] for r in range(9)] == base
    # 2 slots for the first 2 rows, widened to 4 as more came, shrunk in a drain, grown back
    full = widths.index(4)
    shrunk = next(i for i in range(full, len(widths)) if widths[i] < 4)
    assert widths[0] == 2 and 4 in widths[shrunk:]
    assert usage["row_steps"] == sum(len(r.tokens) for r in base)
    with pytest.raises(ValueError, match="max_len"):
        dec.generate(prompts, list(range(9)), max_new_tokens=4, stop_at_eos=True, more=more)
