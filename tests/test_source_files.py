"""Corpus sources keyed by what they hold: local, BabyLM and saved hf folders by their files'
bytes (edits re-key, copies do not, a bucket copy builds the same corpus), hub datasets by name
and revision, relative paths under data_root; the builder refuses files changed since planning."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from cdray import config as C
from cdray.cli import error_line
from cdray.dag import builders
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.data.source_files import anchor_root, resolve
from cdray.sweep.plan import anchored, sweep_key
from tests.conftest import s3_uri, upload_folder

ASSETS = Path(__file__).parent / "assets"


def corpus_cfg(micro_cfg_dict, tmp_path, *sources, **top):
    return C.from_dict(micro_cfg_dict | {"corpus": micro_cfg_dict["corpus"] | {"sources": list(sources)},
                                         "store": {"root": str(tmp_path / "store")}} | top)


def corpus_key(cfg) -> str:
    return build_graph(cfg).corpus.key


def local(path, **kw) -> dict:
    return {"kind": "local", "name": "text", "path": str(path), **kw}


@pytest.fixture
def corpus_copy(text_corpus_dir, tmp_path) -> Path:
    return Path(shutil.copytree(text_corpus_dir, tmp_path / "corpus"))


def test_an_edited_source_re_keys_its_corpus_and_a_copy_does_not(micro_cfg_dict, corpus_copy, tmp_path):
    key = corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, local(corpus_copy)))
    moved = corpus_copy.rename(tmp_path / "moved")
    assert corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, local(moved))) == key
    (moved / "notes.md").write_text("not a file the reader reads\n")
    (moved / ".cache.txt").write_text("hidden: not read either\n")
    assert corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, local(moved))) == key
    with open(moved / "doc_0000.txt", "a") as f:
        f.write("The cat found the river again.\n")
    edited = corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, local(moved)))
    assert edited != key
    # the path is not in the key at all: only the files' digest
    node = build_graph(corpus_cfg(micro_cfg_dict, tmp_path, local(moved))).corpus
    assert "path" not in node.config["sources"][0] and len(node.config["sources"][0]["content"]) == 64


def test_the_builder_refuses_a_source_changed_since_planning(micro_cfg_dict, corpus_copy, tmp_path):
    cfg = corpus_cfg(micro_cfg_dict, tmp_path, local(corpus_copy))
    node = build_graph(cfg).corpus
    (corpus_copy / "doc_0001.txt").write_text("A new text replaced the old one entirely today.\n")
    store = Store.at(tmp_path / "store")
    with pytest.raises(ValueError) as e:
        builders.build(node, cfg, store)
    assert error_line(e.value) == (f"cdray: error: corpus.sources[0].path {str(corpus_copy)!r}: its files changed "
                                   f"since the sweep was planned; plan it again")
    assert not store.is_done("corpus", node.key) and store.list() == []


def test_relative_paths_resolve_under_data_root_which_is_in_no_key(micro_cfg_dict, corpus_copy, tmp_path):
    absolute = corpus_cfg(micro_cfg_dict, tmp_path, local(corpus_copy))
    relative = corpus_cfg(micro_cfg_dict, tmp_path, local("corpus"), data_root=str(tmp_path))
    assert corpus_key(relative) == corpus_key(absolute)
    assert sweep_key(relative) == sweep_key(corpus_cfg(micro_cfg_dict, tmp_path, local("corpus"),
                                                       data_root=str(tmp_path / "elsewhere")))
    # a run hands its nodes an absolute data_root (the driver's cwd when unset); URIs stay as written
    assert anchored(relative).data_root == str(tmp_path) and Path(anchored(absolute).data_root).is_absolute()
    uri = "s3://bucket/cdray/data?endpoint_override=127.0.0.1:9000&scheme=http"
    assert resolve("babylm", uri) == "s3://bucket/cdray/data/babylm?endpoint_override=127.0.0.1:9000&scheme=http"
    assert resolve("s3://other/x", str(tmp_path)) == "s3://other/x"
    assert resolve("/abs/path", uri) == "/abs/path" and resolve("sub/../d", str(tmp_path)) == str(tmp_path / "d")
    assert anchor_root(uri) == uri and anchor_root("data") == str(Path.cwd() / "data")
    with_eval = C.from_dict(C.to_dict(relative) | {"data_root": uri, "eval": {"babylm_dir": "babylm2025"}})
    assert anchored(with_eval).eval.babylm_dir == resolve("babylm2025", uri)  # a URI is never made a path


@pytest.fixture
def bucket(s3_server):
    endpoint, name = s3_server
    return lambda prefix: s3_uri(endpoint, name, f"{prefix}-{uuid.uuid4().hex[:8]}")


def test_a_source_in_a_bucket_keys_and_builds_as_the_local_folder(micro_cfg_dict, corpus_copy, tmp_path, bucket):
    (corpus_copy / "notes.md").write_text("left out by the reader, here and in the bucket\n")
    data = bucket("data")
    upload_folder(corpus_copy, resolve("corpus", data))
    here = corpus_cfg(micro_cfg_dict, tmp_path / "a", local(corpus_copy))
    there = corpus_cfg(micro_cfg_dict, tmp_path / "b", local("corpus"), data_root=data)
    node_here, node_there = build_graph(here).corpus, build_graph(there).corpus
    assert node_there.key == node_here.key
    a, b = Store.at(tmp_path / "a" / "store"), Store.at(tmp_path / "b" / "store")
    builders.build(node_here, here, a)
    builders.build(node_there, there, b)
    for split in ("train", "eval", "seed"):
        assert (a.dir("corpus", node_here.key) / f"{split}.parquet").read_bytes() == \
               (b.dir("corpus", node_there.key) / f"{split}.parquet").read_bytes()
    mirrored = [p for p in (tmp_path / "b" / "store" / "_downloads" / "remote").rglob("*") if p.is_file()]
    assert mirrored and not any(p.name == "notes.md" for p in mirrored)  # only what the reader reads


def test_babylm_and_saved_hf_folders_are_keyed_by_content(micro_cfg_dict, tmp_path, bucket):
    import datasets

    babylm = {"kind": "babylm", "name": "b", "path": str(ASSETS / "babylm")}
    key = corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, babylm))
    copy = shutil.copytree(ASSETS / "babylm", tmp_path / "babylm")
    (copy / "README.txt").write_text("not train_*/*.train or test/*.test: not read\n")
    assert corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, babylm | {"path": str(copy)})) == key
    (copy / "test" / "stories.test").write_text("Another test story.\n")
    assert corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, babylm | {"path": str(copy)})) != key

    texts = [f"Row {i} tells a short story about a cat and a dog who met by the river one day, "
             f"and walked together to the old mill where the miller gave them bread and milk." for i in range(40)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(str(tmp_path / "hfds"))
    saved = {"kind": "hf", "name": "h", "dataset": str(tmp_path / "hfds")}
    cfg = corpus_cfg(micro_cfg_dict, tmp_path, saved)
    remote = upload_folder(tmp_path / "hfds", bucket("hfds"))
    in_bucket = corpus_cfg(micro_cfg_dict, tmp_path / "r", saved | {"dataset": remote})
    node = build_graph(cfg).corpus
    assert build_graph(in_bucket).corpus.key == node.key and "dataset" not in node.config["sources"][0]
    manifest = builders.build(build_graph(in_bucket).corpus, in_bucket, Store.at(tmp_path / "r" / "store"))
    assert manifest["stats"]["sources"]["h"]["taken_words"] > 0  # load_from_disk of the node's mirror


def test_a_hub_dataset_is_keyed_by_name_and_revision(micro_cfg_dict, tmp_path, capsys):
    from cdray.cli import main

    hub = {"kind": "hf", "name": "stories", "dataset": "someone/stories"}
    unpinned = build_graph(corpus_cfg(micro_cfg_dict, tmp_path, hub)).corpus
    assert unpinned.config["sources"][0]["dataset"] == "someone/stories"
    assert "revision" not in unpinned.config["sources"][0]  # the field's default keys as before it existed
    keys = {corpus_key(corpus_cfg(micro_cfg_dict, tmp_path, hub | {"revision": r})) for r in ("v1", "v2")}
    assert len(keys) == 2 and unpinned.key not in keys
    # planning an unpinned hub dataset says, in one line, that its key follows only its name
    path = tmp_path / "hub.yaml"
    import yaml

    path.write_text(yaml.safe_dump(C.to_dict(corpus_cfg(micro_cfg_dict, tmp_path, hub))))
    assert main(["plan", str(path)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == ["note: corpus.sources[0] (stories): the hub dataset 'someone/stories' is not pinned, so its "
                     "key follows only its name; pin corpus.sources[0].revision to key what it serves"]
    with pytest.raises(C.ConfigError, match=r"corpus.sources\[0\].revision"):
        corpus_cfg(micro_cfg_dict, tmp_path, local(tmp_path, revision="v1"))


def test_the_revision_reaches_load_dataset(tmp_path, monkeypatch):
    """No hub here: a folder of data files takes the same load_dataset call (revision included,
    which a local folder ignores); a hub name offline fails naming its revision."""
    from cdray.config import CorpusConfig, SourceConfig
    from cdray.data.corpus import build_corpus
    from cdray.data.sources import CorpusError, iter_documents

    import datasets
    import huggingface_hub

    # offline as these machines are, without waiting on the network: datasets reads the
    # setting once, on import, which an earlier test may have done
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(f'{{"text": "Story {i} of a fox and a hen by the barn."}}\n'
                                                for i in range(30)))
    src = SourceConfig(kind="hf", name="f", dataset=str(folder), revision="v1.0")
    stats = build_corpus(CorpusConfig(sources=(src,), eval_fraction=0.2, seed_fraction=0.2, chunk_min_words=3,
                                      chunk_max_words=20), tmp_path / "out", tmp_path)
    assert stats["sources"]["f"]["available_words"] == 30 * 11
    assert (tmp_path / "hf-cache").is_dir()  # load_dataset built it here, not in the user's cache
    with pytest.raises(CorpusError, match=r"hf dataset 'someone/stories' revision 'abc123' split 'train'"):
        list(iter_documents(SourceConfig(kind="hf", dataset="someone/stories", revision="abc123"), tmp_path))
