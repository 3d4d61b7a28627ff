"""Tests of cdray.models.shapes: parameter counts without a model, SMALL-r selection."""
import math
import subprocess
import sys

import pytest

from cdray.config import MODEL_PRESETS, ModelConfig
from cdray.models.llama import llama_config, param_counts
from cdray.models.shapes import shape_params, small_for_ratio

GOOD = ModelConfig(**MODEL_PRESETS["good"])


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_shape_params_are_the_hf_configs_counts(name):
    m = ModelConfig(**MODEL_PRESETS[name])
    assert shape_params(m, 32000) == param_counts(llama_config(m, 32000))
    sized = ModelConfig(**{**MODEL_PRESETS[name], "vocab_size": 77})
    assert shape_params(sized, 32000) == param_counts(llama_config(sized, 32000))


def test_planning_shapes_imports_no_torch_or_transformers():
    code = ("import sys; from cdray.models.shapes import small_for_ratio; from cdray.config import "
            "MODEL_PRESETS, ModelConfig; small_for_ratio(ModelConfig(**MODEL_PRESETS['good']), 10.0, "
            "32000); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_paper_small_configs_total_ratios():
    # Ulm et al. 2025, arXiv 2510.08245: the released SMALL configs are 2.2 / 3.7 / 7.2 / 8.8 / 11.1x smaller in total
    names = ["small-10x512", "small-8x384", "small-6x256", "small-5x224", "small-4x192"]
    cands = tuple(ModelConfig(**MODEL_PRESETS[n]) for n in names)
    totals = []
    for c in cands:
        _, info = small_for_ratio(GOOD, 2.0, 32000, (c,))
        totals.append(round(info["total_ratio"], 1))
    assert totals == [2.2, 3.7, 7.2, 8.8, 11.1]
    shape, info = small_for_ratio(GOOD, 10.0, 32000, cands)
    assert (shape.layers, shape.hidden) == (8, 384)  # non-embedding ratio ~8.7, the closest to 10
    assert info["non_embedding_ratio"] > info["total_ratio"]


def test_small_for_ratio_search():
    shape, info = small_for_ratio(GOOD, 10.0, 32000)
    assert shape.hidden % 64 == 0 and shape.hidden // shape.heads == 64
    assert shape.ffn == 4 * shape.hidden and shape.context == GOOD.context
    assert abs(math.log(info["non_embedding_ratio"] / 10.0)) < math.log(1.3)
    assert set(info) >= {"target_r", "non_embedding_ratio", "total_ratio", "layers", "hidden"}
    assert info["target_r"] == 10.0 and info["layers"] == shape.layers
    assert small_for_ratio(GOOD, 10.0, 32000) == (shape, info)  # deterministic
    big, info1 = small_for_ratio(GOOD, 1.0, 32000)
    assert (big.layers, big.hidden) == (GOOD.layers, GOOD.hidden) and info1["non_embedding_ratio"] == 1.0
    with pytest.raises(ValueError):
        small_for_ratio(GOOD, 0.0, 32000)
