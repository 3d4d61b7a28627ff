"""The demo's store keys, pinned: a refactoring that changes what a stage computes from the same
config (or how its key is made) fails here; bump a stage version on purpose, then update the pins."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import SHARED_EVAL

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.sweep.plan import sweep_key

TINY = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"

# (stage, label, key) of `make demo`, in build order
TINY_KEYS = [
    ("corpus", "corpus", "df4c398f76bef165"),
    ("tokenizer", "tokenizer", "f312e7727dfb2d48"),
    ("prompts", "prompts", "ff2366da70512605"),
    ("tokens", "tokens[train]", "f1d4997b3eac1b54"),
    ("tokens", "tokens[eval]", "6062408318c224b3"),
    ("train", "train GOOD seed=43", "88852d8e73175be3"),
    ("generate", "generate CD-EARLY-50", "2336ec066459fea2"),
    ("tokens", "tokens[CD-EARLY-50]", "1e56c6cc208ba481"),
    ("generate", "generate CD-EARLY-100", "7aa1b19d9ade7b10"),
    ("tokens", "tokens[CD-EARLY-100]", "37d499d29046237e"),
    ("generate", "generate NO-CONTRAST", "96d5871dc0e5b311"),
    ("tokens", "tokens[NO-CONTRAST]", "ac1d911ded40096a"),
    ("train", "train BASELINE q=0 seed=42", "33df10f66cbdc7a6"),
    ("evaluate", "evaluate BASELINE q=0 seed=42", "2a0925b5518a4eb6"),
    ("train", "train CD-EARLY-50 q=0.3 seed=42", "0efa2036d8989419"),
    ("evaluate", "evaluate CD-EARLY-50 q=0.3 seed=42", "c8c2af9be8075da9"),
    ("train", "train CD-EARLY-100 q=0.3 seed=42", "0c1460cfe21f50f6"),
    ("evaluate", "evaluate CD-EARLY-100 q=0.3 seed=42", "a97edf2bc517549a"),
    ("train", "train NO-CONTRAST q=0.3 seed=42", "03a43f78fba52c8d"),
    ("evaluate", "evaluate NO-CONTRAST q=0.3 seed=42", "a6e42bea29f918ad"),
]


def test_the_demos_store_keys_are_pinned():
    cfg = C.load(TINY)
    assert [(n.stage, n.label, n.key) for n in build_graph(cfg).build_order()] == TINY_KEYS
    assert sweep_key(cfg) == "45fac28e3d30f065"


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="no BabyLM sample")
def test_the_demos_keys_with_babylm_evaluation_are_pinned():
    """The README's BabyLM command: its 71 nodes (evaluation and contamination stages added)."""
    cfg = C.load(TINY, [f"eval.babylm_dir={SHARED_EVAL}", "eval.max_items=100", "eval.steps=[100,150]"])
    keys = sorted((n.stage, n.key) for n in build_graph(cfg).build_order())
    assert len(keys) == 71 and hashlib.sha256(repr(keys).encode()).hexdigest()[:16] == "be1116d23ef014ce"
    assert sweep_key(cfg) == "62cceab86b0d152c"
