"""The store on a real S3-compatible server (moto, loopback): build, reuse, resume, list, manifest last."""
from __future__ import annotations

import uuid

import pytest

from cdray.common.uris import check_uri, is_remote
from cdray.dag.remote import RemoteRoot
from cdray.dag.store import MANIFEST, Store, StoreError
from tests.conftest import s3_uri


class RecordingRoot(RemoteRoot):
    """The real remote root, recording the order of writes (and failing the manifest once if asked)."""

    def __init__(self, uri: str, log: list, fail_manifest: bool = False):
        super().__init__(uri)
        object.__setattr__(self, "log", log)
        object.__setattr__(self, "fail_manifest", fail_manifest)

    def upload(self, local, rel):
        self.log.append(rel)
        super().upload(local, rel)

    def write_bytes(self, rel, data):
        if self.fail_manifest and rel.endswith(MANIFEST):
            raise OSError("connection lost before the manifest")
        self.log.append(rel)
        super().write_bytes(rel, data)


@pytest.fixture
def uri(s3_server):
    endpoint, bucket = s3_server
    return s3_uri(endpoint, bucket, f"store-{uuid.uuid4().hex[:8]}")


def test_uri_classification():
    assert is_remote("s3://b/p?endpoint_override=x") and is_remote("gs://b/p")
    assert not is_remote("/tmp/store") and not is_remote(".cdray/store") and not is_remote("file:///tmp/x")
    assert check_uri("s3://b/p") is None and "scheme" in check_uri("ftp://b/p")
    assert "bucket" in check_uri("s3:///p")


def test_build_uploads_files_then_manifest(uri, tmp_path):
    log: list = []
    store = Store(tmp_path / "cache-a", RecordingRoot(uri, log))

    def builder(out):
        (out / "a.txt").write_text("alpha")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"\x00" * 1000)
        return {"n": 2}

    m = store.get_or_build("demo", "k1", builder, config={"x": 1}, inputs={})
    prefix = f"demo/k1/attempts/{m['attempt']}"  # this build's own folder in the bucket
    assert log == [f"{prefix}/a.txt", f"{prefix}/sub/b.bin", f"demo/k1/{MANIFEST}"]  # manifest last
    assert m["files"]["sub/b.bin"]["bytes"] == 1000
    assert store.remote.files("demo/k1") == {f"attempts/{m['attempt']}/a.txt": 5,
                                             f"attempts/{m['attempt']}/sub/b.bin": 1000,
                                             MANIFEST: len(store.remote.read_bytes(f"demo/k1/{MANIFEST}"))}
    assert store.list() == [("demo", "k1")] and store.verify("demo", "k1") == []


def test_another_host_reuses_and_fetches_verified(uri, tmp_path):
    Store.at(uri, cache=tmp_path / "a").get_or_build(
        "demo", "k", lambda out: (out / "w.txt").write_text("weights") and {}, config={}, inputs={})
    other = Store.at(uri, cache=tmp_path / "b")  # a fresh node: empty cache
    assert other.is_done("demo", "k") and not (tmp_path / "b" / "demo" / "k").exists()
    calls = []
    other.get_or_build("demo", "k", lambda out: calls.append(1) or {}, config={}, inputs={})
    assert calls == []  # reused, nothing rebuilt
    d = other.fetch("demo", "k")
    assert (d / "w.txt").read_text() == "weights" and (d / MANIFEST).is_file()

    third = Store.at(uri, cache=tmp_path / "c")
    obj = f"demo/k/attempts/{third.manifest('demo', 'k')['attempt']}/w.txt"
    third.remote.write_bytes(obj, b"WEIGHTS")  # corrupted in the bucket
    with pytest.raises(OSError, match="checksum mismatch"):
        third.fetch("demo", "k")
    assert not (tmp_path / "c" / "demo" / "k" / MANIFEST).exists()
    assert third.verify("demo", "k") == [third.remote.url(obj)]


def test_interrupted_upload_is_not_done_and_resumes_on_another_host(uri, tmp_path):
    log: list = []
    a = Store(tmp_path / "a", RecordingRoot(uri, log, fail_manifest=True))

    def first(out):
        (out / "part1.txt").write_text("one")
        return {}

    with pytest.raises(OSError, match="before the manifest"):
        a.get_or_build("demo", "r", first, config={}, inputs={})
    assert len(log) == 1 and log[0].startswith("demo/r/attempts/") and log[0].endswith("/part1.txt")
    assert not a.is_done("demo", "r") and a.list() == []
    with pytest.raises(StoreError, match="not built"):
        Store.at(uri, cache=tmp_path / "x").manifest("demo", "r")

    seen = []

    def resume(out):  # a resumable builder: keeps what is there, adds the rest
        seen.append(sorted(p.name for p in out.iterdir()))
        (out / "part2.txt").write_text("two")
        return {}

    b = Store.at(uri, cache=tmp_path / "b")
    m = b.get_or_build("demo", "r", resume, config={}, inputs={})
    assert seen == [["part1.txt"]]  # the uploaded part came back from the bucket
    assert sorted(m["files"]) == ["part1.txt", "part2.txt"]
    assert b.list() == [("demo", "r")] and b.verify("demo", "r") == []
    assert m["attempt"] not in log[0]  # b committed its own upload of every file, a's part included


def test_local_store_is_unchanged(tmp_path):
    store = Store.at(tmp_path / "s")
    assert store.remote is None and store.location == str(tmp_path / "s")
    store.get_or_build("demo", "k", lambda out: {}, config={}, inputs={})
    assert store.fetch("demo", "k") == store.dir("demo", "k") and store.list() == [("demo", "k")]


def test_a_tampered_remote_manifest_writes_nothing_outside_the_cache(uri, tmp_path):
    import json

    Store.at(uri, cache=tmp_path / "a").get_or_build(
        "demo", "t", lambda out: (out / "w.txt").write_text("weights") and {}, config={}, inputs={})
    other = Store.at(uri, cache=tmp_path / "cache" / "b")
    manifest = json.loads(other.remote.read_bytes(f"demo/t/{MANIFEST}"))
    manifest["files"]["a/../../../../escaped.txt"] = manifest["files"].pop("w.txt")
    other.remote.write_bytes(f"demo/t/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(StoreError, match=r"demo/t: unsafe file name 'a/../../../../escaped.txt'"):
        other.fetch("demo", "t")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_two_hosts_building_one_key_never_mix_their_files(uri, tmp_path):
    """Each build uploads under its own attempt prefix and its manifest names it: whichever
    manifest lands last, every file it names is one that same host uploaded."""
    a, b = Store.at(uri, cache=tmp_path / "a"), Store.at(uri, cache=tmp_path / "b")
    for host in (a, b):  # both start before either commits (no lock across hosts)
        host.dir("demo", "race").mkdir(parents=True)
        host._begin_attempt("demo", "race")
    (a.dir("demo", "race") / "w.bin").write_bytes(b"A" * 64)
    (b.dir("demo", "race") / "w.bin").write_bytes(b"B" * 80)
    ma = a.commit("demo", "race", config={}, inputs={}, stats={})
    b.push("demo", "race")  # b still uploading after a committed: a's files are untouched
    assert Store.at(uri, cache=tmp_path / "c").verify("demo", "race") == []
    mb = b.commit("demo", "race", config={}, inputs={}, stats={})
    assert ma["attempt"] != mb["attempt"]
    reader = Store.at(uri, cache=tmp_path / "d")
    assert reader.verify("demo", "race") == []
    assert (reader.fetch("demo", "race") / "w.bin").read_bytes() == b"B" * 80


def test_compressed_files_travel_as_their_bytes(uri, tmp_path):
    """pyarrow streams decompress and compress by file extension unless told not to: a .gz file
    (a BabyLM item file, say) must reach a bucket and come back as the same bytes."""
    import gzip

    data = gzip.compress(b'{"sentence_good": "a", "sentence_bad": "b"}\n' * 50)
    (tmp_path / "items.jsonl.gz").write_bytes(data)
    remote = RemoteRoot(uri)
    remote.upload(tmp_path / "items.jsonl.gz", "data/items.jsonl.gz")
    assert remote.files("data") == {"items.jsonl.gz": len(data)}
    assert remote.read_bytes("data/items.jsonl.gz") == data
    remote.download("data/items.jsonl.gz", tmp_path / "back.jsonl.gz")
    assert (tmp_path / "back.jsonl.gz").read_bytes() == data
