"""The demo's store keys, pinned: a refactoring that changes what a stage computes from the same
config (or how its key is made) fails here; bump a stage version on purpose, then update the pins."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from conftest import BABYLM_SAMPLE

from cdray import config as C
from cdray.config.errors import ADDED, EXECUTION
from cdray.dag.graph import build_graph
from cdray.dag.keys import identity_dict, key_slice, stage_key
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


@pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason="no BabyLM sample")
def test_the_demos_keys_with_babylm_evaluation_are_pinned():
    """The README's BabyLM command: its 71 nodes (evaluation and contamination stages added)."""
    cfg = C.load(TINY, [f"eval.babylm_dir={BABYLM_SAMPLE}", "eval.max_items=100", "eval.steps=[100,150]"])
    keys = sorted((n.stage, n.key) for n in build_graph(cfg).build_order())
    assert len(keys) == 71 and hashlib.sha256(repr(keys).encode()).hexdigest()[:16] == "be1116d23ef014ce"
    assert sweep_key(cfg) == "62cceab86b0d152c"


def _added_fields(obj, prefix=""):
    """(dotted name, section, field) of every field marked ADDED in a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("key_default") == "omit":
            yield prefix + f.name, obj, f
        for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if dataclasses.is_dataclass(v):
                yield from _added_fields(v, f"{prefix}{f.name}{f'[{i}]' if isinstance(value, (list, tuple)) else ''}.")


def test_a_field_added_at_its_default_re_keys_nothing():
    """Code that gains a field whose default reproduces the old behaviour keys every artifact as the
    code before it did: the field enters a key (and a sweep's identity) only when set otherwise."""

    @dataclasses.dataclass(frozen=True)
    class Old:
        lr: float = 0.1

    @dataclasses.dataclass(frozen=True)
    class New:
        lr: float = 0.1
        decay: float = dataclasses.field(default=0.0, metadata=ADDED)
        threads: int = dataclasses.field(default=1, metadata={**EXECUTION, **ADDED})

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: object

    def key(section):
        return stage_key("train", 1, key_slice(section), {})

    assert key(New()) == key(Old()) and key(Outer(New())) == key(Outer(Old()))
    assert identity_dict(Outer(New())) == identity_dict(Outer(Old()))
    assert key(New(decay=0.5)) != key(Old()) and identity_dict(New(decay=0.5)) != identity_dict(Old())
    assert key(New(threads=4)) == key(Old())  # an execution knob never keys


def test_every_added_field_has_a_default_and_stays_out_of_the_demos_keys():
    cfg = C.load(TINY)
    added = list(_added_fields(cfg))
    assert {"train.grad_accum", "train.save_dtype", "eval.precision"} <= {name for name, _, _ in added}
    for name, section, f in added:
        assert f.default is not dataclasses.MISSING, f"{name} is ADDED without a default to reproduce"
        if getattr(section, f.name) == f.default:
            assert f.name not in key_slice(section) and f.name not in identity_dict(section), name
