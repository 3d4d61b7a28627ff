"""The command line: bad input is one line naming the field, with a non-zero exit; plan works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import shipped_data_root

ROOT = Path(__file__).resolve().parent.parent


def cdray(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cdray.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


BAD = [
    ({"grid": {"kk": [1]}}, "grid.kk"),
    ({"grid": {"q": [0, 1.2]}}, "grid.q[1]"),
    ({"grid": {"k": [70]}}, "grid.k[0]"),
    ({"small": {"candidates": [{"preset": "tiny", "vocab_size": 999}]}}, "small.candidates[0].vocab_size"),
    ({"generation": {"decoding": {"lam": -1}}}, "generation.decoding.lam"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_bad_config_is_one_line_naming_the_field(change, field, tmp_path):
    data = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    for section, value in change.items():
        data[section] = {**(data.get(section) or {}), **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    res = cdray("plan", str(path))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and lines[0].startswith("cdray: error:"), res.stderr


def test_two_ratios_that_pick_one_small_shape_are_refused(tmp_path):
    """The paper's names r = 5 and 10 both pick its 8x384 config: one arm under two names."""
    res = cdray("plan", "sweeps/paper.yaml", "--set", "grid.r=[5, 10]", "--set", f"store.root={tmp_path}",
                "--set", f"data_root={shipped_data_root(tmp_path / 'data')}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("cdray: error: config field 'grid.r': 5 and 10 both pick the SMALL shape 8x384")
    assert "small.candidates offer 2.7, 6, 18, 28.2, 48" in lines[0]


def test_missing_file_and_bad_override(tmp_path):
    res = cdray("plan", str(tmp_path / "absent.yaml"))
    assert res.returncode != 0 and "not found" in res.stderr
    res = cdray("plan", "sweeps/tiny.yaml", "--set", "train.steps=-3")
    assert res.returncode != 0 and "train.steps" in res.stderr


def test_plan_lists_stages_with_keys(tmp_path):
    res = cdray("plan", "sweeps/tiny.yaml", "--set", f"store.root={tmp_path}")
    assert res.returncode == 0, res.stderr
    assert "train GOOD seed=43" in res.stdout and "to build" in res.stdout
    assert "generate CD-EARLY-50" in res.stdout


def test_plan_summarizes_a_large_grid_in_one_short_line(tmp_path):
    res = cdray("plan", "sweeps/paper.yaml", "--set", f"store.root={tmp_path}",
                "--set", f"data_root={shipped_data_root(tmp_path / 'data')}")
    assert res.returncode == 0, res.stderr
    last = next(line for line in res.stdout.splitlines() if line.startswith("cells: "))
    assert last.startswith("cells: 160: 16 arms (BASELINE q=0, CD-EARLY-500 q=0.3,"), last
    assert last.endswith("x 10 seeds (42, 43, 44, 45, 46, 47, 48, 49, 50, 51)") and len(last) < 400


@pytest.mark.slow
@pytest.mark.parametrize("command,signame,when", [("run", "SIGTERM", "[cdray] building"),
                                                  ("sweep", "SIGINT", ": training")])
def test_a_killed_run_shuts_down_the_local_ray_cluster_it_started(command, signame, when, micro_cfg_dict, tmp_path):
    """SIGTERM (`kill`, a scheduler's stop) stops cdray as Ctrl-C does, and Ctrl-C stops a Tune
    run while its cells train: exit 130, the interrupted line, and the local Ray cluster goes with
    it instead of running on, orphaned."""
    import os
    import signal
    import time

    import psutil

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(micro_cfg_dict))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # a session of its own: Ctrl-C signals the terminal's whole process group, Ray's workers too
    proc = subprocess.Popen([sys.executable, "-m", "cdray.cli", command, "sweep.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:  # Ray is up once the first stage is being built; cells start later
        if when in line:
            break
    started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)
               if p.name() in ("gcs_server", "raylet")}
    assert started, "no local Ray cluster was started"
    if signame == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(120) == 130, rest[-3000:]
    assert "cdray: interrupted; re-run the same command to resume" in rest, rest[-3000:]
    assert "stopped by ASHA" not in rest, rest[-3000:]
    deadline = time.time() + 60
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in started):
        assert time.time() < deadline, "the local Ray cluster outlived the run"
        time.sleep(1)
