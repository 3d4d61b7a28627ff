"""A clone needs nothing beside it: no file refers to a folder outside the repository, and the
BabyLM sample the tests and the replication score ships inside it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import BABYLM_SAMPLE

ROOT = Path(__file__).resolve().parent.parent
# written apart: this file names them
OUTSIDE = ("../" + "shared", '"shared"' + " / ", "/ " + '"shared"', "PAPER" + ".md", "DESIGN" + ".md")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.stdout.decode().split("\0") if name]


def test_no_file_refers_to_a_folder_beside_the_repository():
    found = []
    for path in tracked():
        if path.suffix == ".gz" or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {needle}" for needle in OUTSIDE if needle in text]
    assert not found, found


def test_the_babylm_sample_ships_in_the_layout_the_suite_reads():
    folders = {p.name for p in BABYLM_SAMPLE.iterdir() if p.is_dir()}
    assert folders == {"blimp_filtered", "supplement_filtered", "ewok_filtered", "entity_tracking",
                       "wug_adj_nominalization", "reading"}
    assert len(list((BABYLM_SAMPLE / "blimp_filtered").glob("*.jsonl.gz"))) == 67
    assert (BABYLM_SAMPLE.parent / "README.md").is_file()  # sources and licenses
