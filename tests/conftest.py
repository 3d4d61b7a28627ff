"""Shared fixtures: one local Ray cluster per session, and a hermetic synthetic-English corpus."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# cdray's Triton decode kernel runs on CPU tensors through Triton's interpreter, which must be
# chosen before anything imports triton (tests/test_decode_attention.py)
os.environ.setdefault("TRITON_INTERPRET", "1")

from cdray.shell.local_cluster import SINGLE_HOST_ENV

# the session's Ray cluster, like a local run's, listens on loopback only (Ray reads this on import)
os.environ[SINGLE_HOST_ENV] = "0"

ROOT = Path(__file__).resolve().parent.parent
BABYLM_SAMPLE = ROOT / "data" / "eval" / "babylm2025"  # the BabyLM 2025 sample the repository ships

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the king",
            "our neighbour", "the children", "a farmer"]
VERBS = ["saw", "liked", "found", "carried", "painted", "followed", "heard", "wanted", "built", "helped"]
OBJECTS = ["the red ball", "a wooden box", "the river", "a long letter", "the garden", "some bread",
           "the tall tree", "a quiet song", "the new house", "an apple"]
TAILS = ["in the morning", "after dinner", "near the school", "with great care", "before the rain",
         "at the market", "", "", "", "yesterday"]


def synthetic_document(rng: random.Random, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}".strip()
        sentences.append(s[0].upper() + s[1:] + ".")
    return " ".join(sentences)


def write_text_corpus(directory: Path, n_docs: int = 160, seed: int = 0) -> Path:
    """A local-source directory of .txt documents made of simple English sentences."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (directory / f"doc_{i:04d}.txt").write_text(synthetic_document(rng, rng.randint(15, 40)) + "\n")
    return directory


def shipped_data_root(root: Path) -> Path:
    """A data_root holding, as tiny fixtures, the folders the shipped sweeps read under theirs
    (sweeps/paper.yaml's babylm and babylm2025, replicate-gpu.yaml's babylm-10m): a missing one is
    an error."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in (("babylm", ROOT / "tests" / "assets" / "babylm"),
                         ("babylm-10m", ROOT / "tests" / "assets" / "babylm"), ("babylm2025", BABYLM_SAMPLE)):
        if not (root / name).exists():
            (root / name).symlink_to(target)
    return root


@pytest.fixture(scope="session")
def text_corpus_dir(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("text_corpus"))


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray cluster of the test session (local, 2 CPUs, no dashboard)."""
    import ray

    env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=env,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def micro_sweep_dict(corpus_dir: Path, root: Path, **grid) -> dict:
    """A complete sweep small enough to train and generate in seconds."""
    return {
        "name": "micro",
        "store": {"root": str(root / "store")},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test"},
        "ray": {"num_cpus": 2, "max_concurrent_cells": 2},
        "corpus": {"sources": [{"kind": "local", "name": "text", "path": str(corpus_dir)}],
                   "eval_fraction": 0.1, "seed_fraction": 0.1, "chunk_min_words": 20,
                   "chunk_max_words": 40},
        "tokenizer": {"vocab_size": 256},
        "train": {"steps": 12, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "checkpoint_every": 4, "eval_blocks": 4, "precision": "fp32", "lr": 3e-3},
        "expert": {"model": {"preset": "micro", "context": 128}, "seed": 43},
        "generation": {"prompt_tokens": 8, "continuations": 2, "max_new_tokens": 16,
                       "token_budget": 300, "batch_size": 8, "shard_prompts": 8, "actors": 2,
                       "actor_cpus": 0.5},
        "eval": {"max_blocks": 8, "batch_size": 8},
        "grid": {"k": [4], "strategy": ["contrastive", "no_contrast"], "q": [0.0, 0.5], "seed": [42],
                 **grid},
    }


def generation_world(root: Path, n_docs: int, words: int, prompt_tokens: int) -> dict:
    """Seed chunks of toy words, their prompts, a word-level tokenizer, an expert and a smaller amateur."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_generation import save_llama, save_tokenizer

    from cdray.decode.synthetic import make_prompts

    tok = save_tokenizer(root / "tok")
    texts = [" ".join(f"w{4 + (7 * i + j) % 60}" for j in range(words)) for i in range(n_docs)]
    pq.write_table(pa.table({"source": ["s"] * n_docs, "doc_id": [f"d{i}" for i in range(n_docs)],
                             "text": texts, "words": [words] * n_docs}), root / "seed.parquet")
    make_prompts(root / "seed.parquet", tok, prompt_tokens, root / "prompts.parquet")
    return {"root": root, "tok": str(tok), "expert": save_llama(root / "expert", 0),
            "amateur": save_llama(root / "amateur", 1, layers=1)}


@pytest.fixture
def micro_cfg_dict(text_corpus_dir, tmp_path) -> dict:
    return micro_sweep_dict(text_corpus_dir, tmp_path)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- a real S3-compatible server

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port; yields (endpoint 'host:port', bucket name)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    boto3.client("s3", endpoint_url=f"http://{endpoint}").create_bucket(Bucket="cdray-test")
    yield endpoint, "cdray-test"
    server.stop()


def s3_uri(endpoint: str, bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def upload_folder(local: Path, uri: str) -> str:
    """Copy every file below `local` to the remote folder `uri` (same relative names); returns uri."""
    from cdray.dag.remote import RemoteRoot

    remote = RemoteRoot(uri)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            remote.upload(path, path.relative_to(local).as_posix())
    return uri
