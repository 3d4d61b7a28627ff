"""`cdray data fetch-eval` against a local archive served over http on 127.0.0.1 and as file://."""
from __future__ import annotations

import functools
import gzip
import http.server
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from cdray.cli import main
from cdray.eval import babylm
from cdray.eval.fetch import fetch_eval


def write_layout(root: Path) -> Path:
    """A minimal BabyLM 2025 `full_eval/` folder: one small file per task."""
    pair = {"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep."}
    files = {
        "blimp_filtered/a.jsonl.gz": [pair | {"UID": "a"}] * 2,
        "supplement_filtered/s.jsonl.gz": [pair] * 2,
        "ewok_filtered/e.jsonl.gz": [{"Context1": "It is hot.", "Target1": "Ice melts.", "Target2": "Ice grows."}],
        "entity_tracking/t.jsonl.gz": [{"input_prefix": "Box 0 contains ", "options": ["a.", "b."], "numops": 0}],
        "wug_adj_nominalization/w.jsonl.gz": [{"sentences": "a\tb", "ratio": 0.5}],
    }
    for rel, rows in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(p, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    (root / "reading").mkdir()
    with gzip.open(root / "reading" / "reading_data.csv.gz", "wt") as f:
        f.write("item,word,prev_word\nThe,cat,The\n")
    return root


@pytest.fixture
def archives(tmp_path):
    src = write_layout(tmp_path / "src" / "evaluation_data" / "full_eval")
    z = tmp_path / "eval.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src"))
    t = tmp_path / "eval.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(tmp_path / "src" / "evaluation_data", "evaluation_data")
    return z, t


def test_fetch_over_http_installs_the_layout(archives, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/eval.zip"
        dest = tmp_path / "data" / "babylm2025"
        done = fetch_eval(url, dest)
        assert done["downloaded"] and babylm.missing_reason(str(dest), babylm.FOLDERS) is None
        assert [p.name for p in babylm.item_files(dest, "blimp")] == ["a.jsonl.gz"]
        assert fetch_eval(url, dest)["downloaded"] is False  # complete: nothing to do
        with pytest.raises(OSError, match="download failed"):
            fetch_eval(url.replace("eval.zip", "missing.zip"), tmp_path / "other")
        assert not (tmp_path / "other").exists()
    finally:
        server.shutdown()


def test_fetch_file_url_tarball_checksum_and_cli(archives, tmp_path, capsys):
    _, tar = archives
    with pytest.raises(ValueError, match="sha256"):
        fetch_eval(tar.as_uri(), tmp_path / "x", sha256="0" * 64)
    assert not (tmp_path / "x").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"eval: {{babylm_dir: {tmp_path / 'd'}, fetch_url: '{tar.as_uri()}'}}\n")
    assert main(["data", "fetch-eval", str(cfg)]) == 0
    assert "installed" in capsys.readouterr().out
    assert babylm.missing_reason(str(tmp_path / "d"), babylm.FOLDERS) is None
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    assert main(["data", "fetch-eval", str(cfg), "--set", f"eval.fetch_url={bad.as_uri()}",
                 "--set", f"eval.babylm_dir={tmp_path / 'e'}"]) == 2
    assert "no blimp_filtered/ folder" in capsys.readouterr().err
    assert main(["data", "fetch-eval", str(cfg), "--set", "eval.fetch_url=null"]) == 0  # already there


def test_an_archive_without_ewok_installs_the_rest_and_says_where_ewok_comes_from(tmp_path, capsys):
    """The release's archive may lack ewok_filtered/ (EWoK's terms are accepted on the hub, and the
    official pipeline builds the folder from there): the rest is installed, the command names the
    missing folder and its source and exits 1, and says so again when run again."""
    import shutil

    src = write_layout(tmp_path / "src" / "evaluation_data" / "full_eval")
    shutil.rmtree(src / babylm.FOLDERS["ewok"])
    z = tmp_path / "no-ewok.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"eval: {{babylm_dir: {tmp_path / 'd'}, fetch_url: '{z.as_uri()}'}}\n")
    for _ in range(2):
        assert main(["data", "fetch-eval", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert "ewok_filtered/ is missing" in err and "evaluation_pipeline.ewok.dl_and_filter" in err
    assert babylm.item_files(tmp_path / "d", "blimp")
