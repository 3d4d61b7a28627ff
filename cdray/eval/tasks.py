"""lm-eval for cdray checkpoints: local task YAMLs over BabyLM files, scoring, per-item records."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

from cdray.eval import babylm

# How each BabyLM task is asked as an lm-eval request (Ulm et al. 2025, arXiv 2510.08245): the score of a
# candidate is the sum of its token log-probs after the context (BOS when the context is empty).
MC_SPECS = {
    "blimp": {"doc_to_text": "", "doc_to_choice": "{{[sentence_good, sentence_bad]}}", "target_delimiter": ""},
    "supplement": {"doc_to_text": "", "doc_to_choice": "{{[sentence_good, sentence_bad]}}",
                   "target_delimiter": ""},
    # " Target" given the context: lm-eval joins them with the delimiter
    "ewok": {"doc_to_text": "{{Context1}}", "doc_to_choice": "{{[Target1, Target2]}}", "target_delimiter": " "},
    # the prefix ends in a space, which lm-eval moves onto each option
    "entity_tracking": {"doc_to_text": "{{input_prefix}}", "doc_to_choice": "{{options}}", "target_delimiter": ""},
    # two whole sentences, tab-separated; sentence 0 ranked first counts as correct (the paper)
    "wug": {"doc_to_text": "", "doc_to_choice": "{{sentences.split('\\t')}}", "target_delimiter": ""},
}
# extra per-item fields kept with the log-likelihoods
EXTRA_FIELDS = {"entity_tracking": ("numops",), "wug": ("ratio",)}


def task_name(task: str, stem: str) -> str:
    return "cdray_" + re.sub(r"[^A-Za-z0-9_]+", "_", f"{task}__{stem}")


def write_task_configs(babylm_dir: str | Path, task: str, out: Path,
                       max_items: Optional[int] = None) -> dict[str, str]:
    """One lm-eval task YAML per item file of `task` under `out`; returns {lm-eval task name: file stem}.

    The YAMLs read the original files (`dataset_path: json`, `data_files`); with max_items the
    first N items are copied next to them first. Reading is converted from CSV to JSONL with
    explicit strings, so an empty context never becomes NaN.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for path in babylm.item_files(babylm_dir, task):
        stem = babylm.file_stem(path)
        if task == "reading":
            docs = babylm.reading_docs(path, max_items)
            babylm.write_items(out / f"{stem}.jsonl", docs)
            # the previous word's log-prob (spillover predictor) exists only where there is one
            prev = [{"row": i, "prev_item": d["prev_item"], "prev_word": d["prev_word"]}
                    for i, d in enumerate(docs) if d["prev_item"] and d["prev_word"].strip()]
            babylm.write_items(out / f"{stem}__prev.jsonl", prev)
            for which, (ctx, word) in {"word": ("item", "word"), "prev": ("prev_item", "prev_word")}.items():
                name = task_name(task, f"{stem}__{which}")
                data = out / (f"{stem}.jsonl" if which == "word" else f"{stem}__prev.jsonl")
                _write_yaml(out / f"{name}.yaml", {
                    "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                    "test_split": "test", "output_type": "loglikelihood",
                    "doc_to_text": "{{" + ctx + "}}", "doc_to_target": " {{" + word + "}}",
                    "target_delimiter": "", "metric_list": [{"metric": "perplexity"}],
                    "metadata": {"version": 1}})
                names[name] = stem
            continue
        data = path
        if max_items is not None:
            data = out / f"{stem}.jsonl"
            babylm.write_items(data, babylm.read_rows(path, max_items))
        name = task_name(task, stem)
        _write_yaml(out / f"{name}.yaml", {
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", **MC_SPECS[task], "doc_to_target": 0,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1}})
        names[name] = stem
    return names


def _write_yaml(path: Path, doc: dict) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def eval_tokenizer(tokenizer_dir: str | Path):
    """The sweep's saved tokenizer, which encodes with `<s>` first (as training read every
    document): lm-eval's contexts then start with BOS, as its own BOS prefix does for empty ones,
    and continuations are encoded without special tokens."""
    from cdray.data.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(tokenizer_dir))
    if tok("a").input_ids[:1] != [tok.bos_token_id]:
        raise ValueError(f"{tokenizer_dir}: this tokenizer does not add {tok.bos_token} when it "
                         f"encodes (saved by an older cdray); re-run the sweep to rebuild it")
    return tok


def hf_lm(model_dir: str | Path, tokenizer_dir: str | Path, batch_size: int, device: str = "cpu",
          precision: str = "fp32"):
    """An lm-eval HFLM over a saved cdray checkpoint (safetensors) and its tokenizer, on `device`.

    It is cdray's PrefixSharingHFLM: options sharing a context score from one pass over it. With
    precision bf16 its forward passes run under bf16 autocast and its log-softmax in fp32.
    """
    from cdray.eval.device import lm_eval_dtypes
    from cdray.eval.prefix_lm import PrefixSharingHFLM
    from cdray.models.llama import load_model

    model = load_model(Path(model_dir), device=device).eval()
    tok = eval_tokenizer(tokenizer_dir)
    return PrefixSharingHFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, add_bos_token=True,
                             max_length=model.config.max_position_embeddings, **lm_eval_dtypes(precision))


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    for name in ("lm-eval", "lm_eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def compiled_templates_cached():
    """lm-eval with each Jinja template compiled once rather than once per document.

    lm-eval 0.4.13's utils.apply_template calls env.from_string for every document and field, a
    quarter of the CPU time of a small model's multiple-choice task; the same environment and
    template text give the same rendering, so caching the compiled template changes no output.
    """
    from lm_eval import utils

    stock = utils.apply_template
    compiled: dict = {}

    def apply_template(template: str, doc: dict) -> str:
        t = compiled.get(template)
        if t is None:
            t = compiled[template] = utils.env.from_string(template)
        return t.render(**doc)

    utils.apply_template = apply_template
    try:
        yield
    finally:
        utils.apply_template = stock


def run_lm_eval(lm, tasks: list[str], include_path: Optional[Path]) -> dict:
    """lm_eval.simple_evaluate with per-item samples; local YAMLs only when include_path is given."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    _quiet()
    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    else:
        manager = TaskManager()
    with compiled_templates_cached():
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                                          bootstrap_iters=0, num_fewshot=0)
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def mc_records(samples: list[dict], extra: tuple[str, ...]) -> list[dict]:
    """Per-item records of a multiple-choice task: log-likelihood per choice, lm-eval's acc."""
    recs = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        lls = [float(r[0]) for r in s["filtered_resps"]]
        rec = {"doc_id": int(s["doc_id"]), "lls": lls, "correct": float(s["acc"])}
        for f in extra:
            rec[f] = s["doc"].get(f)
        recs.append(rec)
    return recs


def evaluate_task(model_dir: str | Path, tokenizer_dir: str | Path, babylm_dir: str | Path, task: str,
                  out: Path, *, max_items: Optional[int], batch_size: int, device: str = "cpu",
                  lm=None, reading_mode: str = "exact", precision: str = "fp32") -> dict:
    """Score one BabyLM task on one checkpoint; writes items/<file>.jsonl and scores.json.

    lm: the checkpoint already loaded by hf_lm (on its device, in its precision), else it is loaded
    here on `device` in `precision`."""
    out = Path(out)
    if task == "reading" and reading_mode == "babylm2025":
        return _finish(task, out, _official_reading(model_dir, tokenizer_dir, babylm_dir, out, max_items,
                                                    device, lm, precision))
    # lm-eval task YAMLs can run code (`!function`): load only the ones written here, now, into a
    # fresh folder (the artifact's own folder may hold files pulled from an unfinished attempt)
    with tempfile.TemporaryDirectory(prefix="cdray-lm-eval-") as fresh:
        tasks_dir = Path(fresh)
        names = write_task_configs(babylm_dir, task, tasks_dir, max_items)
        if not names:
            raise ValueError(f"{babylm_dir}: no {babylm.FOLDERS[task]}/ files for task {task!r}")
        lm = lm or hf_lm(model_dir, tokenizer_dir, batch_size, device, precision)
        results = run_lm_eval(lm, sorted(names), tasks_dir)
        truncated = _write_records(task, names, results["samples"], tasks_dir, out, lm)
        if hasattr(lm, "forget_encodings"):
            lm.forget_encodings()  # the next task's requests are other strings
        _keep_record(tasks_dir, out / "lm_eval_tasks")
    return _finish_lm_eval(task, out, names, results, truncated)


def _write_records(task: str, names: dict[str, str], samples: dict, tasks_dir: Path, out: Path, lm) -> dict:
    """items/<file>.jsonl of one task from lm-eval's samples; returns the share of each file's
    items cut to the model's context."""
    if task == "reading":
        for stem in sorted(set(names.values())):
            docs = babylm.read_items(tasks_dir / f"{stem}.jsonl")
            word = {s["doc_id"]: float(s["filtered_resps"][0][0]) for s in samples[task_name(task, f"{stem}__word")]}
            # a first word has no previous word: its spillover predictor stays missing
            prev = {int(s["doc"]["row"]): float(s["filtered_resps"][0][0])
                    for s in samples[task_name(task, f"{stem}__prev")]}
            babylm.write_items(out / "items" / f"{stem}.jsonl",
                               _reading_records(docs, [word[i] for i in range(len(docs))],
                                                [prev.get(i) for i in range(len(docs))]))
        return {}
    truncated = {}
    for name, stem in names.items():
        recs = mc_records(samples[name], EXTRA_FIELDS.get(task, ()))
        cut = cut_to_context(lm, samples[name])
        for rec in recs:
            rec["truncated"] = cut[rec["doc_id"]]
        truncated[stem] = sum(cut.values()) / len(cut) if cut else 0.0
        babylm.write_items(out / "items" / f"{stem}.jsonl", recs)
    return truncated


def _keep_record(tasks_dir: Path, record: Path) -> None:
    """A copy of the task files used, in the artifact (for the record; never loaded from there)."""
    if record.is_symlink() or record.is_file():
        record.unlink()
    elif record.exists():
        shutil.rmtree(record)
    shutil.copytree(tasks_dir, record)


def _finish_lm_eval(task: str, out: Path, names: dict[str, str], results: dict, truncated: dict) -> dict:
    """scores.json of a task lm-eval scored, with lm-eval's own accuracy per file beside cdray's."""
    extra = {"lm_eval_acc": {stem: results["results"][name].get("acc,none") for name, stem in names.items()
                             if task != "reading"},
             "truncated": truncated, "lm_eval_version": _lm_eval_version()}
    return _finish(task, out, extra)


def _finish(task: str, out: Path, extra: dict) -> dict:
    files = babylm.load_item_dir(out / "items")
    scores = babylm.task_scores(task, files)
    summary = {"task": task, "scores": scores, "items": {k: len(v["doc_id"]) for k, v in files.items()},
               **extra}
    (out / "scores.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    return summary


def _reading_records(docs: list[dict], word: list[float], prev: list[Optional[float]]) -> list[dict]:
    """Per-row records of the reading task: the word's and the previous word's log-probability
    (`pred`, `prev_pred`; None where there is no previous word) beside the regression columns."""
    recs = []
    for i, d in enumerate(docs):
        rec = {"doc_id": i, "pred": word[i], "prev_pred": prev[i]}
        rec.update({c: d[c] for c in babylm.READING_COLUMNS})
        recs.append(rec)
    return recs


def _official_reading(model_dir, tokenizer_dir, babylm_dir, out: Path, max_items, device, lm=None,
                      precision: str = "fp32") -> dict:
    """The reading task by the official BabyLM 2025 pipeline's surprisal (reading_babylm2025)."""
    from cdray.data.tokenizer import load_tokenizer
    from cdray.eval.reading_official import reading_surprisals
    from cdray.models.llama import load_model

    paths = babylm.item_files(babylm_dir, "reading")
    if not paths:
        raise ValueError(f"{babylm_dir}: no {babylm.FOLDERS['reading']}/ files for task 'reading'")
    for path in paths:
        docs = babylm.reading_docs(path, max_items)
        model = lm.model if lm is not None else load_model(Path(model_dir), device=device).eval()
        tok = lm.tokenizer if lm is not None else load_tokenizer(Path(tokenizer_dir))
        # a loaded lm carries its own precision (HFLM's mixed_precision_dtype)
        amp = precision if lm is None else ("bf16" if lm.mixed_precision_dtype is not None else "fp32")
        word, prev = reading_surprisals(model, tok, docs, amp)
        # stored as log-probabilities, as the exact mode's: the regressions do not see the sign
        babylm.write_items(out / "items" / f"{babylm.file_stem(path)}.jsonl",
                           _reading_records(docs, [-w for w in word], [None if p is None else -p for p in prev]))
    return {"reading_mode": "babylm2025"}


def cut_to_context(lm, samples: list[dict]) -> dict[int, bool]:
    """Per doc_id, whether any of its requests was longer than the model's context, so lm-eval
    scored it after cutting the context from the left (the official pipeline feeds it whole)."""
    out = {}
    for s in samples:
        cut = False
        for ctx, cont in s["arguments"]:  # one (context, continuation) per choice
            if ctx:
                ctx_enc, cont_enc = lm._encode_pair(ctx, cont)
            else:  # as lm-eval encodes a request without context: the prefix token, then cont
                ctx_enc, cont_enc = [lm.prefix_token_id], lm.tok_encode(cont, add_special_tokens=False)
            cut = cut or len(ctx_enc) + len(cont_enc) > lm.max_length + 1
        out[int(s["doc_id"])] = cut
    return out


def evaluate_builtin(model_dir: str | Path, tokenizer_dir: str | Path, task: str, out: Path, *,
                     batch_size: int, device: str = "cpu", precision: str = "fp32") -> dict:
    """A built-in lm-eval task by name (needs the HF hub for its data); keeps its samples."""
    lm = hf_lm(model_dir, tokenizer_dir, batch_size, device, precision)
    results = run_lm_eval(lm, [task], None)
    numbers = {f"{t}/{m}": v for t, ms in results["results"].items() for m, v in ms.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with open(Path(out) / "samples.jsonl", "w", encoding="utf-8") as f:
        for t, ss in results["samples"].items():
            for s in ss:
                f.write(json.dumps({"task": t, "doc_id": s["doc_id"], "filtered_resps": s["filtered_resps"],
                                    **{k: v for k, v in s.items() if k in ("acc", "acc_norm")}},
                                   default=str) + "\n")
    summary = {"task": task, "scores": numbers, "lm_eval_version": _lm_eval_version()}
    (Path(out) / "scores.json").write_text(json.dumps(summary, indent=1))
    return summary


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
