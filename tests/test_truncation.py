"""Truncation rules registered one module each (cdray.decode.truncation): top-k, top-p, min-p and
locally typical, hand-computed; applied in order; the fused sampler leaves every rule to the plain
path; and a rule drives the engine like any other."""
from __future__ import annotations

import math

import pytest
import torch
from test_decoding import pair  # noqa: F401 - the fixture
from test_decoding import _hf_reference

from cdray.config import ConfigError, DecodingConfig
from cdray.decode.fused import fused_sampler_fits
from cdray.decode.sample import generate
from cdray.decode.truncation import RULES, active, label, register, rules, truncate


def logs(*p):
    return torch.tensor([[math.log(x) for x in p]])


def kept(scores):
    return torch.isfinite(scores[0]).tolist()


def test_every_rule_is_registered_in_order_with_its_field():
    assert [r.field for r in rules()] == ["top_k", "top_p", "min_p", "typical_p"]
    fields = {f for f in DecodingConfig.__dataclass_fields__}
    assert set(RULES) <= fields, "every rule's field is a DecodingConfig field"


def test_min_p_keeps_what_is_at_least_min_p_of_the_top_token():
    s = logs(0.5, 0.3, 0.15, 0.05)
    assert kept(truncate(s, DecodingConfig(min_p=0.3))) == [True, True, True, False]  # >= 0.15
    assert kept(truncate(s, DecodingConfig(min_p=0.7))) == [True, False, False, False]
    assert kept(truncate(s, DecodingConfig(min_p=0.1))) == [True, True, True, True]
    # kept tokens keep their scores
    assert truncate(s, DecodingConfig(min_p=0.3))[0, :3].tolist() == pytest.approx(s[0, :3].tolist())


def test_typical_keeps_the_tokens_nearest_the_entropy():
    p = [0.4, 0.3, 0.2, 0.1]
    h = -sum(x * math.log(x) for x in p)  # 1.280: surprisals 0.92, 1.20, 1.61, 2.30
    order = sorted(range(4), key=lambda i: abs(-math.log(p[i]) - h))
    assert order == [1, 2, 0, 3]  # distances 0.08, 0.33, 0.36, 1.02
    s = logs(*p)
    assert kept(truncate(s, DecodingConfig(typical_p=0.25))) == [False, True, False, False]  # 0.3 crosses 0.25
    assert kept(truncate(s, DecodingConfig(typical_p=0.5))) == [False, True, True, False]  # 0.3 + 0.2
    assert kept(truncate(s, DecodingConfig(typical_p=0.95))) == [True, True, True, True]
    # a -inf token (out of a head, blocked) is never typical
    s2 = torch.tensor([[0.0, 0.0, -math.inf]])
    assert kept(truncate(s2, DecodingConfig(typical_p=0.99))) == [True, True, False]


def test_rules_apply_in_order_and_compose():
    s = logs(0.4, 0.3, 0.2, 0.1)
    # top-k 3 first, then min-p 0.6 of the renormalised top (0.4/0.9): keeps p >= 0.6 * 0.444
    assert kept(truncate(s, DecodingConfig(top_k=3, min_p=0.6))) == [True, True, False, False]
    assert active(DecodingConfig()) == [] and label(DecodingConfig()) == "none"
    assert label({"top_k": 50, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.9}) == "K-50+P-.9+M-.05+T-.9"


def test_the_fused_sampler_leaves_every_rule_to_the_plain_path():
    assert fused_sampler_fits("contrastive", DecodingConfig())
    for field in RULES:
        assert not fused_sampler_fits("contrastive", DecodingConfig(**{field: 0.5 if field != "top_k" else 5}))


@pytest.mark.parametrize("field", ["min_p", "typical_p"])
def test_a_bad_value_is_one_error_naming_the_field(field):
    with pytest.raises(ConfigError) as e:
        DecodingConfig(**{field: 1.5}).validate("generation.decoding")
    assert e.value.field == f"generation.decoding.{field}"


@pytest.mark.parametrize("d", [DecodingConfig(alpha=0.1, min_p=0.2), DecodingConfig(alpha=0.1, typical_p=0.9)])
def test_the_engine_samples_with_a_rule_as_the_reference_loop_does(pair, d):  # noqa: F811
    expert, amateur = pair
    prompts = [[1, 5, 6], [1, 9, 10, 11, 12, 13]]
    got = generate(expert, amateur, prompts, [3, 4], "contrastive", d, max_new_tokens=10,
                   stop_at_eos=False, batch_size=2)
    for p, s, r in zip(prompts, [3, 4], got):
        assert r.tokens == _hf_reference(expert, amateur, p, s, "contrastive", d, 10)


def test_registering_a_field_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register("top_k", order=99, label=str)(lambda scores, v: scores)
