"""Code in the keys: each stage's code is derived from its builder, digested without comments or
docstrings, and pinned with its version, so a change to it asks for a version bump or a re-pin."""
from __future__ import annotations

import ast
import copy
import json

from cdray.dag import code_units as U
from cdray.dag import stage_code as S
from cdray.dag.stages import STAGES


def test_every_stages_code_matches_its_pin():
    """Fails when a stage's code changed: bump its version (output changed) or re-pin (it did not)."""
    found = S.problems()
    assert not found, "\n" + "\n".join(found)


def _units(stage: str) -> set[str]:
    return set(S.stage_code(stage))


def test_a_stages_code_is_what_its_builder_reads():
    corpus = _units("corpus")
    assert {f"cdray/data/{m}.py" for m in ("corpus", "sources", "documents", "packaged", "source_files")} <= corpus
    assert "cdray/dag/builders.py::build_corpus" in corpus
    train = _units("train")
    assert {f"cdray/models/{m}.py" for m in ("training", "train_data", "llama", "checkpoints")} <= train
    assert {"cdray/dag/builders.py::train_job", "cdray/dag/builders.py::input_dir"} <= train
    assert {"cdray/decode/synthetic.py", "cdray/decode/engine.py", "cdray/decode/kernels.py",
            "cdray/dag/builders.py::build_generate", "cdray/dag/builders.py::generator_kwargs"} <= _units("generate")
    assert {"cdray/eval/perplexity.py", "cdray/models/llama.py"} <= _units("evaluate")
    # a builder's own names shadow its module's: build_corpus's `build` is the corpus's, not builders.build
    assert "cdray/dag/builders.py::build" not in corpus
    assert not any(u.startswith(("cdray/decode/", "cdray/models/", "cdray/eval/")) for u in corpus)
    assert not any(u.startswith("cdray/data/corpus") for u in train)


def test_plumbing_is_no_stages_code():
    every = set().union(*(_units(s) for s in STAGES))
    for unit in every:
        module = unit.split("::")[0].removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        assert not U.is_plumbing(module) or "::" in unit, unit
    plumbing = ("cdray/shell/", "cdray/tracking/", "cdray/sweep/", "cdray/dag/store.py", "cdray/dag/stages.py",
                "cdray/dag/graph.py", "cdray/dag/keys.py", "cdray/common/console.py", "cdray/config/loading.py")
    assert not [u for u in every if u.startswith(plumbing)]


def _digest(source: str) -> str:
    return U.digest(ast.parse(source))


def test_comments_docstrings_and_formatting_change_no_digest():
    before = 'def f(x, y=2):\n    """Sum."""\n    return x + y\n'
    after = ('def f(x,\n      y = 2):  # the sum\n    """The sum of\n    x and y."""\n\n'
             '    # why: nothing\n    return (x +\n            y)\n')
    assert _digest(before) == _digest(after)
    assert _digest(before) != _digest(before.replace("y=2", "y=3"))
    assert _digest(before) != _digest(before.replace("x + y", "y + x"))
    # a string that is not a docstring is code
    assert _digest('x = "a"\n') != _digest('x = "b"\n')


def test_a_changed_module_at_the_same_version_fails_naming_it_and_what_to_do():
    now = S.current()
    pins = copy.deepcopy(now)
    pins["code"]["cdray/models/training.py"] = "0" * U.DIGEST_LENGTH
    found = S.problems(now, pins)
    stages = {m.split("'")[1] for m in found}
    assert stages == {s for s in STAGES if "cdray/models/training.py" in now["stages"][s]["code"]} == {"train"}
    (msg,) = found
    version = STAGES["train"].version
    assert f"stage 'train' (version {version})" in msg and "cdray/models/training.py (changed)" in msg
    assert f"bump its version in cdray/dag/stages.py (to {version + 1})" in msg
    assert "python -m cdray.dag.stage_code --pin" in msg
    # a module many stages read names each of them
    pins = copy.deepcopy(now)
    pins["code"]["cdray/dag/builders.py::input_dir"] = "0" * U.DIGEST_LENGTH
    assert len(S.problems(now, pins)) == sum("cdray/dag/builders.py::input_dir" in s["code"]
                                             for s in now["stages"].values()) > 1


def test_a_stage_reading_other_code_fails_too():
    now = S.current()
    pins = copy.deepcopy(now)
    pins["stages"]["tokens"]["code"].remove("cdray/data/tokenizer.py")
    pins["stages"]["tokens"]["code"].append("cdray/data/corpus.py")
    (msg,) = S.problems(now, pins)
    assert "cdray/data/tokenizer.py (newly read)" in msg and "cdray/data/corpus.py (no longer read)" in msg


def test_a_bumped_version_without_a_re_pin_fails_and_a_version_never_goes_down():
    now = S.current()
    pins = copy.deepcopy(now)
    pins["code"]["cdray/models/training.py"] = "0" * U.DIGEST_LENGTH
    bumped = copy.deepcopy(now)
    bumped["stages"]["train"]["version"] += 1
    (msg,) = S.problems(bumped, pins)  # the bump answers the change; the pins still need writing
    assert "version bumped without a re-pin: train" in msg and "--pin" in msg
    lowered = copy.deepcopy(now)
    lowered["stages"]["generate"]["version"] -= 1
    (msg,) = S.problems(lowered, now)
    assert "'generate': its version went down" in msg


def test_pinning_writes_one_line_per_stage_and_unit(tmp_path):
    path = tmp_path / "stage_code.json"
    assert len(S.pin(path)) == len(STAGES)  # each pinned for the first time
    text = path.read_text()
    pins = json.loads(text)
    assert S.problems(pins=pins) == [] and S.pin(path) == []
    lines = text.splitlines()
    for name in STAGES:
        (line,) = [ln for ln in lines if ln.strip().startswith(f'"{name}": {{"version"')]
        assert json.loads("{" + line.strip().rstrip(",") + "}")[name]["version"] == STAGES[name].version
    assert all(sum(ln.strip().startswith(f'"{u}":') for ln in lines) == 1 for u in pins["code"])
    assert text == (S.PIN_FILE.read_text())  # the repository's pins are today's code
