"""What a stage may read besides its node's keyed config: how fast it runs and where things are,
never what it computes. Builders get this and their node, never the sweep's whole config, so a
stage cannot read a setting its key does not hold: an axis over any field re-keys exactly what
reads it, and the GOOD's recipe and the students' can differ."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from cdray.config import CorpusConfig, GenerationConfig, TrainConfig, parse_section


def execution_fields(section: Any) -> dict:
    """The execution-only fields of a config section (metadata EXECUTION: out of every key)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.metadata.get("key") is False}


@dataclass(frozen=True)
class Execution:
    """The execution knobs of a run (each a field marked EXECUTION in cdray.config) and the places
    it reads and writes (the store, the data folders: their keys hold the data's digests)."""

    store_root: str
    store_cache: Optional[str]
    train: dict  # TrainConfig's execution-only fields
    generation: dict  # GenerationConfig's
    eval: dict  # EvalConfig's
    use_gpu: bool  # the sweep's nodes have GPUs (evaluation asks for one)
    data_root: Optional[str]
    sources: tuple[Optional[str], ...]  # where each corpus source's files are (None: packaged, hub)
    babylm_dir: Optional[str]  # where the BabyLM evaluation data is

    def recipe(self, keyed: dict) -> TrainConfig:
        """A train node's recipe: its keyed slice with this run's execution knobs."""
        return parse_section(TrainConfig, {**keyed, **self.train}, "train")

    def corpus(self, keyed: dict) -> CorpusConfig:
        """A corpus node's config: its keyed slice (each folder source's digest where its location
        was) with each folder source where this run finds it."""
        sources = []
        for entry, location in zip(keyed["sources"], self.sources):
            entry = {k: v for k, v in entry.items() if k != "content"}
            if location is not None:
                entry["dataset" if entry["kind"] == "hf" else "path"] = location
            sources.append(entry)
        return parse_section(CorpusConfig, {**keyed, "sources": sources}, "corpus")

    def generation_config(self, keyed: dict) -> GenerationConfig:
        """A generate node's settings: its keyed slice with this run's actor pool and engine knobs."""
        return parse_section(GenerationConfig, {**keyed, **self.generation}, "generation")


__all__ = ["Execution", "execution_fields"]
