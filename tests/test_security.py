"""Attacks and accidents at the store's edges: tampered manifests and listings, torn commits."""
from __future__ import annotations

import json

import pytest

from cdray.store import MANIFEST, Store, StoreError, member


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "", "a/..",
                                  "..\\\\x", "a\\\\..\\\\b"])
def test_a_file_name_that_leaves_the_artifact_is_refused(tmp_path, name):
    with pytest.raises(StoreError, match="demo/k"):
        member(tmp_path / "demo" / "k", name, "demo/k")


def test_a_symlinked_name_that_leads_outside_is_refused(tmp_path):
    out = tmp_path / "demo" / "k"
    out.mkdir(parents=True)
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="leads outside"):
        member(out, "link/secret", "demo/k")
    assert member(out, "sub/file.bin", "demo/k") == out / "sub" / "file.bin"


def test_a_manifest_naming_files_outside_is_refused_on_verify(tmp_path):
    store = Store.at(tmp_path / "store")
    store.get_or_build("demo", "k", lambda out: (out / "a.txt").write_text("a") and {}, config={}, inputs={})
    path = store.dir("demo", "k") / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"]["../../../outside.txt"] = {"bytes": 1, "sha256": "0" * 64}
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="unsafe file name '../../../outside.txt'"):
        store.verify("demo", "k")


def test_a_committed_artifact_with_a_truncated_file_is_not_built_and_is_rebuilt(tmp_path, capsys):
    store = Store.at(tmp_path / "store")
    build = lambda out: (out / "data.bin").write_bytes(b"x" * 100) and {}  # noqa: E731
    first = store.get_or_build("demo", "k", build, config={}, inputs={})
    (store.dir("demo", "k") / "data.bin").write_bytes(b"")  # what a power cut can leave
    assert not store.is_done("demo", "k")
    assert "demo/k is treated as not built: its file data.bin is 0 bytes, its manifest says 100" in \
        capsys.readouterr().err
    again = store.get_or_build("demo", "k", build, config={}, inputs={})
    assert again["files"] == first["files"] and store.is_done("demo", "k")
