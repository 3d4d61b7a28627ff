"""Every benchmark in bench/ runs: its quick mode, in a subprocess from the repository root, exits 0
and prints its key lines (a benchmark that no test runs rots).

The quick modes check code paths, not speeds: their figures come from tiny shapes on a shared CPU.
bench/decode_attention.py and bench/row_determinism.py run inside `bench/gpu_checks.sh --quick`
(on the CPU, Triton's kernels through its interpreter), as they run inside it on a GPU. Each script
starts its own Ray cluster where it needs one: attached to a shared one ($RAY_ADDRESS), cdray would
run as on a remote cluster, which is not the path these benchmarks measure. The module takes about
6.5 minutes on 2 idle CPU cores (the sweep ~1.5, gpu_checks.sh ~1, each Ray benchmark 0.5-0.75).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BABYLM_SAMPLE

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NOT_BENCHMARKS = {"common.py"}  # helpers the benchmarks import

# script -> (arguments, seconds allowed, what must be installed or present, lines its output must hold)
QUICK = {
    "actor_startup.py": (["--quick"], 180, [], [r"^light_vs_transformers=[\d.]+$"]),
    "babylm_conformance.py": (["--quick"], 300, ["babylm"],
                              [r"^blimp\s+[-\d.]+\s+[-\d.]+\s+[1-9]\d*\s+1\.0000\s", r"^wug\s",
                               r"^reading \(exact\): .* surprisal \|Δ\| median 0\.00e\+00",
                               r"^reading \(babylm2025\): "]),
    "decoding.py": (["--quick"], 180, [], [r"^cd_vs_single=[\d.]+ cd_vs_naive=[\d.]+$"]),
    "decoding_ab.py": (["--quick"], 180, ["git"], [r"^same tokens: True$", r"^speedup=[\d.]+$"]),
    "evaluation.py": (["--quick"], 300, ["babylm"], [r"^  blimp\s+[1-9]\d* items", r"^RESULT items=[1-9]\d* "]),
    "generation_scaling.py": (["--quick"], 300, [],
                              [r"^1- and 2-actor corpora identical: True$", r"^two_vs_one_actor=[\d.]+$"]),
    "kv_fp8.py": (["--quick"], 180, [], [r"^teacher-forced expert: mean KL", r"^sampled: \d+/8 rows identical"]),
    "mfu.py": (["--quick"], 180, [], [r"^mfu=[\d.]+$"]),
    "scale_study.py": (["--quick"], 180, [],
                       [r"^sweep files: 11 points written", r"^figure scale\.png: \d+ bytes$",
                        r"^figure qcurve\.png: \d+ bytes$"]),
    "shard_device.py": (["--quick"], 180, [], [r"^shards_vs_engine=[\d.]+ shard_bytes_identical=True$"]),
    "schedule.py": (["--quick"], 420, ["moto", "namespaces"], [r"^wall_s=\d+ bound_s=\d+ wall_vs_bound=[\d.]+ "]),
    "shard_overlap.py": (["--quick"], 240, [], [r"^two_at_once_vs_one_at_a_time=[\d.]+$"]),
    "store_footprint.py": (["--quick"], 300, ["moto"],
                           [r"^store_ratio=[\d.]+ ", r"^fetch_ratio=[\d.]+ ", r"^stall_s=[\d.]+ "]),
    "sweep.py": (["--quick"], 420, [], [r"^executed=(\d+) minimal=\1 naive=\d+ rerun_executed=0$"]),
    "training.py": (["--quick"], 420, [], [r"^\[2\] ", r"^ray_train_vs_plain=[\d.]+$"]),
    "gpu_checks.sh": (["--quick"], 420, ["triton"],
                      [r"^one_row_bits_equal=True", r"^step_check fp8: ", r"^best_config=\d+,\d+,\d+",
                       r"^cdray batch +3: ", r"^cd_best_tok_s=\d+$", r"^rows_identical=True$",
                       r"^profile: batch 2, 2 new tokens"]),
    "decode_attention.py": None,  # run by gpu_checks.sh --quick
    "row_determinism.py": None,  # run by gpu_checks.sh --quick
}


def _missing(need: str) -> str | None:
    import importlib.util

    if need == "babylm" and not BABYLM_SAMPLE.is_dir():
        return f"no BabyLM sample at {BABYLM_SAMPLE}"
    if need in ("moto", "triton") and importlib.util.find_spec(need) is None:
        return f"{need} is not installed"
    if need == "namespaces":
        from node_cluster import namespaces_work

        return namespaces_work()
    if need == "git" and (shutil.which("git") is None or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0):
        return "not a git checkout"
    return None


def test_every_benchmark_has_a_quick_mode_here():
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")} - NOT_BENCHMARKS
    assert scripts == set(QUICK), "bench/ and tests/test_bench.py's QUICK table differ"
    for name in scripts:
        assert "--quick" in (BENCH / name).read_text(), f"bench/{name} has no --quick"


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s, v in QUICK.items() if v is not None])
def test_quick_mode_runs(script, tmp_path):
    args, seconds, needs, lines = QUICK[script]
    for need in needs:
        if reason := _missing(need):
            pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TRITON_INTERPRET")}
    # PY: gpu_checks.sh's python; OUT: its logs
    env.update(PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", PY=sys.executable, OUT=str(tmp_path / "out"),
               # the scripts' work folders go with the test's; Ray's stays short (socket paths)
               TMPDIR=str(tmp_path), RAY_TMPDIR=os.environ.get("RAY_TMPDIR", "/tmp"))
    cmd = ["bash" if script.endswith(".sh") else sys.executable, str(BENCH / script), *args]
    # its own session: a timeout kills the script and every process it started (Ray's included)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"bench/{script} {' '.join(args)} ran past {seconds} s; its output ended:\n{out[-4000:]}")
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    for line in lines:
        assert re.search(line, out, re.MULTILINE), f"bench/{script}: no line matching {line!r} in:\n{out[-4000:]}"
