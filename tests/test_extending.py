"""docs/extending.md's walk-throughs, run as written: a decoding rule, a corpus source, an
evaluation task."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import yaml

from cdray import config as C

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_the_decoding_rule_of_the_walk_through_registers_and_truncates():
    from cdray.decode.truncation import RULES, label, truncate

    module = blocks("python")[0]
    assert module.startswith('"""Top-a truncation')
    try:
        exec(compile(module, "cdray/decode/truncation/top_a.py", "exec"), {"__name__": "top_a"})
        assert list(RULES)[-1] == "top_a"
        scores = torch.tensor([[math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]])
        out = truncate(scores, {"top_a": 0.5})  # keeps p >= 0.5 * 0.25 = 0.125
        assert torch.isfinite(out[0]).tolist() == [True, True, True, False]
        assert label({"top_a": 0.5, "top_k": 50}) == "K-50+A-0.5"
    finally:
        RULES.pop("top_a", None)


def test_the_config_field_of_the_walk_through_is_the_shape_of_the_shipped_rules():
    from cdray.config.errors import ADDED
    from cdray.config.generation import DecodingConfig

    fields = DecodingConfig.__dataclass_fields__
    for name in ("min_p", "typical_p"):  # the rules added this way
        assert fields[name].default is None and dict(fields[name].metadata) == ADDED
    assert "field(default=None, metadata=ADDED)" in blocks("python")[1]


def test_the_corpus_sources_of_the_walk_through(tmp_path):
    from cdray.data.sources import iter_documents

    corpus = yaml.safe_load(blocks("yaml")[0])["corpus"]
    local = next(s for s in corpus["sources"] if s["kind"] == "local")
    folder = tmp_path / local["path"]
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one document of words " * 10)
    (folder / "sub" / "b.txt").write_text("another document of words " * 10)
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": f"line {i} of words " * 10}) for i in range(3)))
    src = C.parse_section(C.SourceConfig, {**local, "path": str(folder)}, "corpus.sources[0]")
    docs = list(iter_documents(src, tmp_path / "downloads"))
    assert len(docs) == 2 + 3  # one per .txt file (the folder read recursively), one per jsonl line

    import datasets

    hf = next(s for s in corpus["sources"] if s["kind"] == "hf")
    datasets.Dataset.from_dict({"text": ["a saved story " * 12, "and another one " * 12]}).save_to_disk(
        str(tmp_path / hf["dataset"]))
    src = C.parse_section(C.SourceConfig, {**hf, "dataset": str(tmp_path / hf["dataset"])}, "corpus.sources[1]")
    assert len(list(iter_documents(src, tmp_path / "downloads"))) == 2


def test_the_evaluation_task_of_the_walk_through_is_a_stage_per_milestone():
    from cdray.dag.graph import build_graph

    ev = yaml.safe_load(blocks("yaml")[1])["eval"]
    cfg = C.load(ROOT / "sweeps" / "tiny.yaml", [f"eval.lm_eval_tasks={ev['lm_eval_tasks']}",
                                                  f"eval.steps={ev['steps']}"])
    graph = build_graph(cfg)
    labels = [n.label for c in graph.cells for n in c.babylm]
    assert labels and all("lm_eval:hellaswag" in label and "step=150" in label for label in labels)
