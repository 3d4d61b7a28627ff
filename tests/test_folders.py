"""Data folders, local or in a bucket (moto): listings with a reader's filter, content digests
remembered by the files' stats, and mirrors of remote folders that stay inside the node's cache."""
from __future__ import annotations

import os
import uuid

import boto3
import pytest

from cdray.data import folders
from cdray.dag.store import StoreError
from tests.conftest import s3_uri, upload_folder


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("beta\n")
    (root / ".hidden.txt").write_text("never read\n")
    return root


@pytest.fixture
def bucket_uri(s3_server):
    endpoint, bucket = s3_server
    return lambda prefix: s3_uri(endpoint, bucket, f"{prefix}-{uuid.uuid4().hex[:8]}")


def test_listing_keeps_what_the_filter_keeps(tree):
    assert set(folders.listing(str(tree))) == {"a.txt", "sub/b.txt"}
    assert set(folders.listing(str(tree), lambda rel: True)) == {"a.txt", "sub/b.txt", ".hidden.txt"}
    assert folders.listing(str(tree / "absent")) == {} and not folders.exists(str(tree / "absent"))


def test_the_digest_follows_bytes_and_names_not_the_folder(tree, tmp_path):
    import shutil

    first = folders.files_digest(tree)
    copy = shutil.copytree(tree, tmp_path / "elsewhere")
    assert folders.files_digest(copy) == first
    (copy / ".hidden.txt").write_text("not read, not keyed\n")
    assert folders.files_digest(copy) == first
    (copy / "a.txt").write_text("alpha\nmore\n")
    assert folders.files_digest(copy) != first
    (copy / "a.txt").write_text("alpha\n")
    (copy / "a.txt").rename(copy / "c.txt")  # same bytes under another name: another digest
    assert folders.files_digest(copy) != first


def test_a_digest_is_not_computed_again_for_untouched_files(tree, tmp_path):
    calls = []

    def compute(folder):
        calls.append(folder)
        return folders.files_digest(folder)

    cache = tmp_path / "cache"
    first = folders.digest(tree, kind="t", compute=compute, cache=cache)
    assert folders.digest(tree, kind="t", compute=compute, cache=cache) == first and len(calls) == 1
    with open(tree / "a.txt", "a") as f:
        f.write("appended\n")
    assert folders.digest(tree, kind="t", compute=compute, cache=cache) != first and len(calls) == 2
    (tree / "a.txt").write_text("alpha\n")  # the old bytes again: read again, the old digest
    assert folders.digest(tree, kind="t", compute=compute, cache=cache) == first and len(calls) == 3


def test_a_remote_folder_mirrors_incrementally_and_digests_as_the_local_one(tree, tmp_path, bucket_uri):
    uri = upload_folder(tree, bucket_uri("mirror"))
    cache = tmp_path / "cache"
    assert folders.exists(uri) and not folders.exists(bucket_uri("nothing-here"))
    local = folders.mirror(uri, folders.visible, cache)
    assert local.is_relative_to(cache) and sorted(p.relative_to(local).as_posix()
                                                  for p in local.rglob("*") if p.is_file()) == ["a.txt", "sub/b.txt"]
    assert folders.location_digest(uri, folders.visible, cache=cache) == folders.files_digest(tree)
    stamp = (local / "sub" / "b.txt").stat().st_mtime_ns
    from cdray.dag.remote import RemoteRoot

    remote = RemoteRoot(uri)
    remote.write_bytes("a.txt", b"alpha, changed\n")
    remote.fs.delete_file(remote.path("sub/b.txt"))
    remote.write_bytes("c.txt", b"new\n")
    folders.mirror(uri, folders.visible, cache)
    assert (local / "a.txt").read_bytes() == b"alpha, changed\n" and (local / "c.txt").is_file()
    assert not (local / "sub" / "b.txt").exists()  # gone from the bucket, gone from the mirror
    remote.write_bytes("sub/b.txt", b"beta\n")
    folders.mirror(uri, folders.visible, cache)
    assert (local / "sub" / "b.txt").stat().st_mtime_ns != stamp  # downloaded again, not kept


def test_a_tampered_listing_cannot_write_outside_the_mirror(tmp_path, s3_server):
    endpoint, bucket = s3_server
    prefix = f"tampered-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/ok.txt", Body=b"fine\n")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/../escaped.txt", Body=b"evil\n")  # lists as ../escaped.txt
    cache = tmp_path / "cache"
    with pytest.raises(StoreError, match="unsafe file name '../escaped.txt'"):
        folders.mirror(s3_uri(endpoint, bucket, prefix), lambda rel: True, cache)
    written = [p for p in cache.rglob("*") if p.is_file() and p.suffix == ".txt"] if cache.exists() else []
    assert written == []
    assert not any(name.endswith("escaped.txt") for _, _, names in os.walk(tmp_path) for name in names)
