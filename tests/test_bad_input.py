"""Every user mistake is one line naming the field or file, a non-zero exit, and nothing built damaged."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdray.cli import error_line, main
from cdray.dag.store import Store

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "sweeps" / "tiny.yaml"


# ---------------------------------------------------------------- config mistakes (through the CLI)

# (case id, --set overrides, text the one-line error must contain)
CONFIG_CASES = [
    ("unknown-top-key", ["nope=1"], "'nope'"),
    ("unknown-nested-key", ["grid.kk=[1]"], "grid.kk"),
    ("int-is-text", ["train.steps=ten"], "train.steps"),
    ("bool-is-text", ["tracking.enabled=maybe"], "tracking.enabled"),
    ("list-item-wrong-type", ["grid.q=[abc]"], "grid.q[0]"),
    ("q-above-1", ["grid.q=[0,1.2]"], "grid.q[1]"),
    ("q-below-0", ["grid.q=[-0.1]"], "grid.q[0]"),
    ("alpha-out-of-range", ["generation.decoding.alpha=1.5"], "generation.decoding.alpha"),
    ("lambda-negative", ["generation.decoding.lam=-1"], "generation.decoding.lam"),
    ("temperature-zero", ["generation.decoding.temperature=0"], "generation.decoding.temperature"),
    ("penalty-plus-inf", ["generation.decoding.penalty=inf"], "generation.decoding.penalty"),
    ("top-k-zero", ["generation.decoding.top_k=0"], "generation.decoding.top_k"),
    ("top-p-above-1", ["generation.decoding.top_p=1.5"], "generation.decoding.top_p"),
    ("k-not-a-milestone", ["grid.k=[70]"], "grid.k[0]"),
    ("k-not-before-expert", ["grid.k=[200]"], "grid.k[0]"),
    ("r-not-smaller", ["grid.r=[0.5]"], "grid.r[0]"),
    ("p-is-one", ["grid.p=[1.0]"], "grid.p[0]"),
    ("unknown-strategy", ["grid.strategy=[beam]"], "grid.strategy[0]"),
    ("train-batch-zero", ["train.batch_size=0"], "train.batch_size"),
    ("generation-batch-zero", ["generation.batch_size=0"], "generation.batch_size"),
    ("eval-batch-zero", ["eval.batch_size=0"], "eval.batch_size"),
    ("train-workers-zero", ["train.num_workers=0"], "train.num_workers"),
    ("batch-not-divisible", ["train.num_workers=3"], "train.batch_size"),
    ("actors-zero", ["generation.actors=0"], "generation.actors"),
    ("amateur-vocab-differs", ["small.candidates=[{preset: tiny, vocab_size: 999}]"],
     "small.candidates[0].vocab_size"),
    ("unknown-preset", ["expert.model.preset=huge"], "expert.model.preset"),
    ("vocab-too-small", ["tokenizer.vocab_size=10"], "tokenizer.vocab_size"),
    ("local-source-without-path", ["corpus.sources=[{kind: local}]"], "corpus.sources[0].path"),
    ("seq-len-over-context", ["train.seq_len=4096"], "train.seq_len"),
    ("override-without-equals", ["grid.q"], "grid.q"),
    ("override-below-a-string", ["name.x=1"], "name.x"),
    ("name-is-a-path", ["name=.."], "'name'"),
    ("name-has-a-slash", ["name=a/b"], "'name'"),
    ("r-is-nan", ["grid.r=[.nan]"], "grid.r[0]"),
    ("rope-theta-infinite", ["expert.model.rope_theta=inf"], "expert.model.rope_theta"),
    ("lr-infinite", ["train.lr=.inf"], "train.lr"),
    ("penalty-nan", ["generation.decoding.penalty=nan"], "generation.decoding.penalty"),
    ("grid-seed-negative", ["grid.seed=[-1]"], "grid.seed[0]"),
    ("expert-seed-negative", ["expert.seed=-3"], "expert.seed"),
    ("split-seed-negative", ["corpus.split_seed=-1"], "corpus.split_seed"),
    ("generation-seed-negative", ["generation.seed=-1"], "generation.seed"),
    ("min-doc-words-negative", ["corpus.min_doc_words=-5"], "corpus.min_doc_words"),
    ("grid-over-the-cap", ["grid.seed=[1,2,3]", "grid.max_cells=5"], "grid.max_cells"),
    ("source-folder-missing", ["corpus.sources=[{kind: local, path: /nonexistent/corpus}]"],
     "corpus.sources[0].path"),
    ("babylm-dir-missing", ["eval.babylm_dir=/nonexistent/babylm2025"], "eval.babylm_dir"),
    ("local-store-on-a-cluster", ["ray.address=10.0.0.5:6379"], "store.root"),
    ("data-root-not-a-filesystem", ["data_root=ftp://host/data"], "'data_root'"),
    ("source-uri-not-a-filesystem", ["corpus.sources=[{kind: local, path: 'ftp://host/x'}]"], "corpus.sources[0].path"),
    ("revision-of-a-local-source", ["corpus.sources=[{kind: local, path: /x, revision: v1}]"],
     "corpus.sources[0].revision"),
]


def _plan(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("cdray: error:"), err
    assert expected in lines[0], err


@pytest.mark.parametrize("case,overrides,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_mistake_is_one_line_naming_the_field(case, overrides, expected, tmp_path, capsys):
    argv = ["plan", str(TINY), "--set", f"store.root={tmp_path / 'store'}"]
    for o in overrides:
        argv += ["--set", o]
    _assert_one_line(*_plan(argv, capsys), expected)
    assert not (tmp_path / "store").exists()  # a bad config builds nothing


FILE_CASES = [
    ("malformed-yaml", "grid: [1, 2\n", "bad.yaml"),
    ("top-level-list", "- a\n- b\n", "bad.yaml"),
    ("not-utf8", b"name: caf\xe9\n", "bad.yaml"),
]


@pytest.mark.parametrize("case,content,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_config_file_is_named(case, content, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    _assert_one_line(*_plan(["plan", str(path)], capsys), expected)


def test_missing_config_file_is_named(tmp_path, capsys):
    _assert_one_line(*_plan(["plan", str(tmp_path / "absent.yaml")], capsys), "absent.yaml")


# ---------------------------------------------------------------- input-file mistakes (stage level)


@pytest.fixture
def store(tmp_path) -> Store:
    """A store that already holds one artifact, which no failing build may damage."""
    s = Store.at(tmp_path / "store")
    s.get_or_build("corpus", "prebuilt", lambda out: (out / "train.txt").write_text("kept\n") and {},
                   config={}, inputs={})
    return s


def _fails_cleanly(store: Store, build, expected: str) -> str:
    """Run build as a store stage; it must fail with a one-line error and leave the store intact."""
    with pytest.raises(BaseException) as info:
        store.get_or_build("probe", "failing", build, config={}, inputs={})
    line = error_line(info.value)
    assert line is not None, f"unexpected error type {type(info.value).__name__}: {info.value}"
    assert "\n" not in line and expected in line, line
    assert not store.is_done("probe", "failing")
    assert store.verify("corpus", "prebuilt") == []
    return line


def _local_corpus(directory: Path):
    from cdray.config import SourceConfig
    from cdray.data.sources import iter_documents

    src = SourceConfig(kind="local", name="mine", path=str(directory))
    return lambda out: list(iter_documents(src, out))


def _dir_with(tmp_path: Path, name: str, data: bytes | str) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "good.txt").write_text("A perfectly fine document with several words in it.\n")
    target = d / name
    (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)
    return d


CORPUS_CASES = [
    ("empty-txt", "empty.txt", ""),
    ("whitespace-txt", "blank.txt", " \n\n \n"),
    ("non-utf8-txt", "latin1.txt", "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1")),
    ("binary-txt", "blob.txt", b"\x7fELF\x00\x01\x02\x03"),
    ("malformed-jsonl", "rows.jsonl", '{"text": "fine"}\n{"text": broken\n'),
    ("jsonl-without-text", "rows.jsonl", '{"body": "no text field"}\n'),
    ("empty-jsonl", "rows.jsonl", "\n\n"),
    ("not-parquet", "rows.parquet", b"PAR1 this is not really parquet"),
]


@pytest.mark.parametrize("case,name,data", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_bad_corpus_file_is_named(case, name, data, tmp_path, store):
    _fails_cleanly(store, _local_corpus(_dir_with(tmp_path, name, data)), name)


def test_parquet_without_the_text_column_is_named(tmp_path, store):
    d = tmp_path / "corpus"
    d.mkdir()
    pq.write_table(pa.table({"body": ["some words here"]}), d / "rows.parquet")
    line = _fails_cleanly(store, _local_corpus(d), "rows.parquet")
    assert "'text'" in line


def test_missing_corpus_directory_is_named(tmp_path, store):
    _fails_cleanly(store, _local_corpus(tmp_path / "nowhere"), "nowhere")


def test_truncated_token_file_is_named(tmp_path, store):
    from cdray.models.train_data import open_tokens

    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:200])
    _fails_cleanly(store, lambda out: open_tokens(path, "real"), "tokens.npy")


def test_token_ids_outside_the_vocabulary_are_named(tmp_path, store):
    from cdray.models.train_data import open_tokens

    path = tmp_path / "tokens.npy"
    np.save(path, np.array([1, 5, 300, 2], dtype=np.uint16))
    line = _fails_cleanly(store, lambda out: open_tokens(path, "synthetic", vocab_size=256), "tokens.npy")
    assert "[1, 300]" in line and "[0, 256)" in line
    assert open_tokens(path, "synthetic", vocab_size=301).max() == 300


# ---------------------------------------------------------------- checkpoints and shards


@pytest.fixture(scope="module")
def gen_world(tmp_path_factory):
    from conftest import generation_world
    from test_generation import save_llama

    world = generation_world(tmp_path_factory.mktemp("badgen"), n_docs=4, words=6, prompt_tokens=4)
    return world | {"bad_vocab": save_llama(world["root"] / "bad_vocab", 2, vocab_size=80)}


def _generator(world, out_dir, expert=None, amateur=None):
    from cdray import config
    from cdray.decode.synthetic import ShardGenerator

    gen = config.GenerationConfig(prompt_tokens=4, continuations=2, max_new_tokens=6, batch_size=4,
                                  shard_prompts=2)
    return ShardGenerator(expert_dir=expert or world["expert"],
                          amateur={"kind": "small", "model_dir": amateur or world["amateur"], "dropout": 0.0},
                          strategy="contrastive", generation=gen,
                          prompts_path=str(world["root"] / "prompts.parquet"), out_dir=str(out_dir),
                          tokenizer_dir=world["tok"])


def test_missing_checkpoint_is_named(gen_world, tmp_path, store):
    missing = tmp_path / "no-such-checkpoint"
    _fails_cleanly(store, lambda out: _generator(gen_world, out, expert=str(missing)), "no-such-checkpoint")


def test_truncated_checkpoint_is_named(gen_world, tmp_path, store):
    import shutil

    broken = tmp_path / "truncated-expert"
    shutil.copytree(gen_world["expert"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _fails_cleanly(store, lambda out: _generator(gen_world, out, expert=str(broken)), "truncated-expert")


def test_a_checkpoint_whose_shapes_do_not_match_its_config_names_the_file(tmp_path, store):
    import shutil

    from cdray.config import ModelConfig
    from cdray.models.llama import build_model, load_model, save_model
    from cdray.models.weights import load_weights

    for name, hidden in (("mismatched", 32), ("other", 64)):
        save_model(build_model(ModelConfig(layers=2, hidden=hidden, heads=2, ffn=64, context=64), 100, 0),
                   tmp_path / name)
    shutil.copy(tmp_path / "other" / "config.json", tmp_path / "mismatched" / "config.json")
    for load in (load_model, load_weights):
        line = _fails_cleanly(store, lambda out: load(tmp_path / "mismatched"), "mismatched/model.safetensors")
        assert "has shape [100, 32], config.json describes [100, 64]" in line


def test_amateur_with_another_vocabulary_is_named(gen_world, store):
    _fails_cleanly(store, lambda out: _generator(gen_world, out, amateur=gen_world["bad_vocab"]), "bad_vocab")


def test_corrupted_shard_is_named(gen_world, tmp_path, store):
    from cdray.decode.shards import finalize_corpus

    out = tmp_path / "gen"
    _generator(gen_world, out).run_shard(0, 0, 2)
    shard = out / "shards" / "shard_00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _fails_cleanly(store, lambda o: finalize_corpus(out, 1, 10_000), "shard_00000.parquet")


@contextlib.contextmanager
def _tiny_disk(path: Path, size: str):
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({res.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_while_writing_a_shard(gen_world, tmp_path):
    with _tiny_disk(tmp_path / "disk", "256k") as disk:
        store = Store.at(disk / "store")
        store.get_or_build("corpus", "prebuilt", lambda out: (out / "train.txt").write_text("kept\n") and {},
                           config={}, inputs={})
        generator = _generator(gen_world, disk / "store" / "probe" / "failing")
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as f:
            while True:  # fill the disk to the last byte
                f.write(b"\0" * 4096)

        line = _fails_cleanly(store, lambda out: generator.run_shard(0, 0, 2), "shard_00000")
        assert "No space left" in line
        shards = disk / "store" / "probe" / "failing" / "shards"
        assert not (shards / "shard_00000.json").exists()  # an uncommitted shard is never trusted
        assert not list(shards.glob(".tmp*")) and not list(shards.glob("*.tmp"))


# ---------------------------------------------------------------- services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_is_one_line_and_quick(tmp_path, store):
    import time

    from cdray.config import TrackingConfig
    from cdray.tracking.runs import Tracker

    uri = f"http://user:s3cret@127.0.0.1:{_free_port()}"
    started = time.time()
    line = _fails_cleanly(store, lambda out: Tracker(TrackingConfig(uri=uri)), "tracking.uri")
    assert "s3cret" not in line  # credentials never reach the terminal
    assert time.time() - started < 30


def test_unreachable_ray_cluster_is_one_line_naming_where_its_address_came_from():
    """ray.init retries a host:port nothing answers at for minutes; init_ray probes it first."""
    from cdray.config import ConfigError
    from cdray.shell.ray_exec import probe_address

    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError) as e:
        probe_address(address, "ray.address", timeout=5)
    assert error_line(e.value) == (f"cdray: error: config field 'ray.address': no Ray cluster "
                                   f"answers at {address} (Connection refused)")
    with pytest.raises(ConnectionError, match=r"^\$RAY_ADDRESS: no Ray cluster answers at ray://"):
        probe_address(f"ray://{address}", None, timeout=5)
    probe_address("auto", "ray.address")  # left to ray.init, which fails fast on its own


def test_manifest_records_checksums(store):
    manifest = json.loads((store.dir("corpus", "prebuilt") / "manifest.json").read_text())
    assert manifest["files"]["train.txt"]["sha256"]


def test_a_store_root_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a store")
    code, err = _plan(["plan", str(TINY), "--set", f"store.root={tmp_path / 'afile'}"], capsys)
    _assert_one_line(code, err, "store.root")
    assert "is a file" in err and (tmp_path / "afile").read_text() == "not a store"


def test_a_read_only_store_fails_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs ({res.stderr.strip() or 'not root'})")
    try:
        code, err = _plan(["run", str(TINY), "--set", f"store.root={ro / 'store'}",
                           "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"], capsys)
        _assert_one_line(code, err, "store.root")
        assert "not writable" in err and not (tmp_path / "m.db").exists()  # nothing was started
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_busy_port_for_the_mlflow_server_is_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, err = _plan(["mlflow", "--root", str(tmp_path / "ml"), "--port", str(port)], capsys)
    _assert_one_line(code, err, f"--port {port}")
    assert not (tmp_path / "ml").exists()


def test_a_seed_split_too_small_for_the_budget_is_named_before_any_training():
    from types import SimpleNamespace

    from cdray.config import ConfigError
    from cdray.decode.synthetic import budget_reachable

    gen = SimpleNamespace(continuations=2, max_new_tokens=16, token_budget=1000)
    with pytest.raises(ConfigError, match=r"generation.token_budget.*30 prompts x 2 continuations x "
                                          r"16 new tokens = 960 at most"):
        budget_reachable(gen, 30)
    budget_reachable(gen, 32)  # 1024 >= 1000


@pytest.mark.slow
def test_a_sweep_whose_seed_split_cannot_meet_the_budget_stops_before_the_good(micro_cfg_dict, ray_session):
    from cdray import config as C
    from cdray.config import ConfigError
    from cdray.dag.graph import build_graph
    from cdray.shell.driver import run_sweep

    cfg = C.from_dict(micro_cfg_dict | {"generation": micro_cfg_dict["generation"] | {"token_budget": 10**7}})
    with pytest.raises(ConfigError, match="generation.token_budget"):
        run_sweep(cfg, use_tune=False, echo=lambda line: None)
    store = Store.at(cfg.store.root)
    graph = build_graph(cfg)
    assert store.is_done("prompts", graph.prompts.key) and not store.is_done("train", graph.good.key)
