"""What a sweep shows: cdray's own lines on the terminal, every library's output in the log file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quiet_sends_library_output_to_the_log_and_keeps_cdrays_lines(tmp_path):
    log = tmp_path / "logs" / "run.log"
    code = f"""
import os, subprocess, sys, logging
sys.path.insert(0, {str(ROOT)!r})
from cdray.common import console
from pathlib import Path
with console.quiet(Path({str(log)!r})):
    print("a library's print")
    logging.getLogger("ray").warning("a library's warning")
    os.write(2, b"E core_worker.cc: a C++ log line\\n")
    subprocess.run(["echo", "a child process's line"])
    console.say("[cdray] cdray's own line")
    console.progress("train GOOD", "step 1/10", final=True)
print("after: back on the terminal")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    shown = out.stdout.splitlines()
    assert shown == [f"[cdray] Ray, MLflow and library logs go to {log} (--verbose shows them here)",
                     "[cdray] cdray's own line", "[cdray]   train GOOD: step 1/10",
                     "after: back on the terminal"], out.stdout + out.stderr
    assert out.stderr == ""
    logged = log.read_text()
    for line in ("a library's print", "a library's warning", "a C++ log line", "a child process's line"):
        assert line in logged


def test_plain_progress_lines_come_at_a_sane_rate(capsys, monkeypatch):
    from cdray.common import console

    clock = iter([0.0, 1.0, 2.0, 31.0, 32.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(console, "_last", {})
    for i in range(5):
        console.progress("generate X", f"{i}/5")
    assert capsys.readouterr().out.splitlines() == ["[cdray]   generate X: 0/5", "[cdray]   generate X: 3/5"]


def test_the_arm_table_says_what_it_is():
    from cdray.eval.arm_table import format_table, regime_line

    rows = [{"arm": "BASELINE", "q": 0.0, "seed": 42, "final_ppl": 100.0},
            {"arm": "CD-EARLY-50", "q": 0.3, "seed": 42, "final_ppl": 90.0, "realised_q": 0.3}]
    one_seed = format_table(rows)
    assert "±" not in one_seed and "+10.00%" in one_seed
    two_seeds = format_table(rows + [{**rows[0], "seed": 43, "final_ppl": 110.0}])
    assert "105.00 ± 7.07" in two_seeds
    assert "smoke test outside the paper's" in regime_line(0.3, 1)
    assert "smoke test outside the paper's" in regime_line(0.3, 5)
    # the paper's epochs with one seed is no smoke test, but its Δ has no confidence interval
    assert "(the paper: ~16), but 1 seed: too few for a confidence interval" in regime_line(16.0, 1)
    assert "as the paper's" in regime_line(16.0, 3) and "too few" not in regime_line(16.0, 3)


def test_plan_says_what_a_run_costs(tmp_path, capsys):
    from cdray.cli import main

    assert main(["plan", str(ROOT / "sweeps" / "tiny.yaml"), "--set", f"store.root={tmp_path / 's'}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-4].startswith("to build: 1 corpus, 1 tokenizer, 1 prompts, 5 tokens, 5 train, 3 generate, 4 evaluate")
    assert out[-3].startswith("estimate on this machine: about ") and "stated default rates" in out[-3]
    assert out[-2].startswith("schedule on 2 CPU lanes ") and "the shared stages one after another first" in out[-2]
    # 5 runs of 3 milestones of 6.2 MB weights (1.56M parameters) plus one resume state each
    assert out[-1].startswith("store: about ") and "31.2 MB per run" in out[-1]


def test_the_next_commands_keep_the_runs_overrides_and_mask_secrets(tmp_path, capsys):
    from cdray import config as C
    from cdray.cli import _next_steps

    cfg = C.load(ROOT / "sweeps" / "tiny.yaml", [f"store.root={tmp_path / 'my store'}"])
    _next_steps("sweeps/tiny.yaml", [f"store.root={tmp_path / 'my store'}",
                                     "eval.fetch_url=https://x.org/a.zip?X-Amz-Signature=s3cr3t"], cfg)
    first = capsys.readouterr().out.splitlines()[0]
    assert f"cdray report sweeps/tiny.yaml --set 'store.root={tmp_path / 'my store'}'" in first
    assert "s3cr3t" not in first and "X-Amz-Signature=" in first
