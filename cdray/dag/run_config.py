"""A sweep's config as its stages may read it: its execution knobs and where its store and data
are (plumbing: no stage's output depends on it; the keys hold what does)."""
from __future__ import annotations

from cdray.config import SweepConfig
from cdray.dag.execution import Execution, execution_fields


def execution_of(cfg: SweepConfig) -> Execution:
    from cdray.config.plain import to_dict
    from cdray.data.source_files import resolve, source_location

    def plain(section) -> dict:
        return {k: to_dict(v) for k, v in execution_fields(section).items()}

    return Execution(
        store_root=cfg.store.root, store_cache=cfg.store.cache,
        train=plain(cfg.train), generation=plain(cfg.generation), eval=plain(cfg.eval),
        use_gpu=cfg.train.use_gpu, data_root=cfg.data_root,
        sources=tuple(source_location(s, cfg.data_root) for s in cfg.corpus.sources),
        babylm_dir=resolve(cfg.eval.babylm_dir, cfg.data_root) if cfg.eval.babylm_dir else None,
    )


def as_execution(run: SweepConfig | Execution) -> Execution:
    return run if isinstance(run, Execution) else execution_of(run)
