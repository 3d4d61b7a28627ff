"""BabyLM 2025 evaluation data: the directory layout, item files, per-item records and task scores."""
from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from cdray.common.redaction import mask_uri
from cdray.common.uris import is_remote
from cdray.data import folders

# task -> folder of a directory in the BabyLM 2025 layout (evaluation_data/full_eval/)
FOLDERS = {
    "blimp": "blimp_filtered",
    "supplement": "supplement_filtered",
    "ewok": "ewok_filtered",
    "entity_tracking": "entity_tracking",
    "wug": "wug_adj_nominalization",
    "reading": "reading",
}
# the seven scores of the paper's tables, in its column order (μΔREL averages these), and the
# task that produces each; WUG is the paper's accuracy of ranking sentence 0 first
SCORES = ("blimp", "supplement", "entity_tracking", "ewok", "wug", "reading", "eye_tracking")
# shown beside them, never averaged into μΔREL: BabyLM 2025's WUG score, Spearman's ρ between the
# model's preference for sentence 0 and the human ratio (a coefficient in [-1, 1], as the
# official pipeline reports it)
SHOWN_SCORES = ("wug_spearman",)
SCORE_TASK = {s: s for s in SCORES} | {"eye_tracking": "reading", "wug_spearman": "wug"}
EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
READING_COLUMNS = EYE_TRACKING + (SELF_PACED, "Subtlex_log10", "length", "context_length", "prev_length")


def _patterns(task: str) -> tuple[str, ...]:
    return ("*.csv.gz", "*.csv") if task == "reading" else ("*.jsonl.gz", "*.jsonl")


def task_file(task: str):
    """Whether a file at this relative name (under the BabyLM folder) can be one of the task's
    item files: what a remote folder's mirror holds and a digest's stats cover."""
    folder, patterns = FOLDERS[task], _patterns(task)

    def select(rel: str) -> bool:
        parts = rel.split("/")
        return len(parts) == 2 and parts[0] == folder and any(fnmatch.fnmatch(parts[1], p) for p in patterns)

    return select


def item_files(babylm_dir: str | Path, task: str) -> list[Path]:
    """The item files of one task, sorted by name (empty if the folder is missing)."""
    folder = Path(babylm_dir) / FOLDERS[task]
    pats = _patterns(task)
    found = {}
    for pat in pats:
        for p in folder.glob(pat):
            found.setdefault(file_stem(p), p)
    return [found[k] for k in sorted(found)]


def file_stem(path: Path) -> str:
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl", ".csv.gz", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def missing_reason(babylm_dir: Optional[str], tasks: Iterable[str]) -> Optional[str]:
    """One line saying why BabyLM evaluation cannot run, or None if every task has its files
    (babylm_dir: a local folder or a URI)."""
    if not babylm_dir:
        return "eval.babylm_dir is not set"
    root = str(babylm_dir)
    shown = mask_uri(root)
    if not folders.exists(root):
        return f"eval.babylm_dir {shown!r} does not exist (cdray data fetch-eval downloads it)"
    if is_remote(root):
        names = list(folders.listing(root, lambda rel: True))
        empty = [t for t in tasks if not any(map(task_file(t), names))]
    else:
        empty = [t for t in tasks if not item_files(root, t)]
    if empty:
        inner = next((sub for sub in ("full_eval", "evaluation_data/full_eval")
                      if not is_remote(root) and (Path(root) / sub / FOLDERS[empty[0]]).is_dir()), None)
        hint = f"; the task folders are in {inner}/: point eval.babylm_dir there" if inner else ""
        return (f"eval.babylm_dir {shown!r} has no files for {', '.join(empty)} "
                f"(expected {FOLDERS[empty[0]]}/{hint})")
    return None


def data_digest(babylm_dir: str | Path, task: str, cache: Optional[Path] = None) -> str:
    """sha256 over the names and contents of a task's item files: the data's part of a stage key.
    babylm_dir may be a URI (its task files are mirrored into cache first); with a cache, the
    digest is remembered by the files' stats, so unchanged files are not read again."""
    select = task_file(task)
    local = folders.mirror(str(babylm_dir), select, cache)
    return folders.digest(local, select, kind=f"babylm-{task}", compute=lambda d: _items_digest(d, task), cache=cache)


def _items_digest(babylm_dir: Path, task: str) -> str:
    h = hashlib.sha256()
    for p in item_files(babylm_dir, task):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def _open_text(path: Path):
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8") if path.name.endswith(".gz") else \
        open(path, encoding="utf-8")


def read_rows(path: Path, max_items: Optional[int] = None) -> list[dict]:
    """Rows of a .jsonl(.gz) or .csv(.gz) item file, the first max_items only if given."""
    rows = []
    with _open_text(Path(path)) as f:
        if ".csv" in Path(path).name:
            reader: Iterable = csv.DictReader(f)
        else:
            reader = (json.loads(line) for line in f if line.strip())
        for row in reader:
            rows.append(row)
            if max_items is not None and len(rows) >= max_items:
                break
    return rows


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def reading_docs(path: Path, max_items: Optional[int] = None) -> list[dict]:
    """The reading CSV as plain string / float records (pandas-free; empty numbers are NaN).

    An empty `item` is the context "None", as the official pipeline reads it (the one such row
    of BabyLM 2025 begins "None of the city people ..."); a row has a previous word where its
    `prev_item` is not empty."""
    docs = []
    for row in read_rows(path, max_items):
        d = {k: (row.get(k) or "") for k in ("item", "word", "prev_item", "prev_word")}
        d["item"] = d["item"] or "None"
        d.update({c: _num(row.get(c)) for c in READING_COLUMNS})
        docs.append(d)
    return docs


# ---------------------------------------------------------------- per-item records and scores


def write_items(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=True) + "\n")


def read_items(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_item_dir(items_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """items/<file>.jsonl of a task node as column arrays per file (what the metrics and bootstrap use)."""
    out = {}
    for p in sorted(Path(items_dir).glob("*.jsonl")):
        recs = read_items(p)
        cols: dict[str, list] = defaultdict(list)
        for r in recs:
            for k, v in r.items():
                if k == "lls":
                    continue
                cols[k].append(np.nan if v is None else v)
        arrays = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
        if recs and "lls" in recs[0]:
            arrays["ll_margin"] = np.asarray([r["lls"][0] - max(r["lls"][1:]) for r in recs], dtype=float)
        out[p.stem] = arrays
    return out


def _macro(files: dict[str, dict[str, np.ndarray]], idx: Optional[dict[str, np.ndarray]]) -> float:
    accs = []
    for name, cols in files.items():
        c = cols["correct"] if idx is None else cols["correct"][idx[name]]
        if len(c):
            accs.append(c.mean())
    return 100.0 * float(np.mean(accs)) if accs else math.nan


def _entity_tracking(files, idx) -> float:
    per_file = []
    for name, cols in files.items():
        c, ops = cols["correct"], cols["numops"]
        if idx is not None:
            c, ops = c[idx[name]], ops[idx[name]]
        groups = [c[ops == v].mean() for v in np.unique(ops)]
        if groups:
            per_file.append(np.mean(groups))
    return 100.0 * float(np.mean(per_file)) if per_file else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (NaN if either side is constant)."""
    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        sv = v[order]
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and sv[j + 1] == sv[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2.0
            i = j + 1
        return r

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def task_scores(task: str, files: dict[str, dict[str, np.ndarray]],
                idx: Optional[dict[str, np.ndarray]] = None) -> dict[str, float]:
    """Every score a task yields from its per-item arrays; idx resamples each file (bootstrap)."""
    if task in ("blimp", "supplement", "ewok"):
        return {task: _macro(files, idx)}
    if task == "entity_tracking":
        return {task: _entity_tracking(files, idx)}
    if task == "wug":
        name, cols = next(iter(files.items()))
        sel = slice(None) if idx is None else idx[name]
        return {"wug": 100.0 * float(cols["correct"][sel].mean()),
                "wug_spearman": spearman(cols["ll_margin"][sel], cols["ratio"][sel])}
    if task == "reading":
        from cdray.eval.reading import reading_scores

        name, cols = next(iter(files.items()))
        sel = slice(None) if idx is None else idx[name]
        return reading_scores({k: v[sel] for k, v in cols.items()})
    raise ValueError(f"unknown BabyLM task {task!r}")
