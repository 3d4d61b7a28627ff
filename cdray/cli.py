"""Command line: `cdray run|plan|sweep|report|verify|export CONFIG [--profile NAME] [--set a.b=v ...]`, `cdray mlflow`."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from cdray import config as config_mod
from cdray.common.signals import sigterm_interrupts
from cdray.shell.local_cluster import in_job, keep_on_loopback


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdray", description="Contrastive-decoding synthetic-data sweeps on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "sweep": "run a sweep: shared stages once, cells as a Ray Tune run, tracked in MLflow",
        "run": "build every stage of a config in order, without Ray Tune (debugging, single cells)",
        "plan": "list every stage of a config with its store key and whether it is cached",
        "report": "the arm table from MLflow, and the paper's table and figures (markdown, PNG) logged to MLflow",
        "verify": "check every artifact of the store against its manifest checksums",
        "export": "write one cell's checkpoint as a folder transformers loads (weights, tokenizer, model card)",
    }
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("config", help="sweep / config YAML file")
        if name == "report":
            sp.add_argument("more", nargs="*", metavar="SWEEP.yaml",
                            help="more sweeps (e.g. the settings of a truncation sweep) for one report")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=v",
                        help="override one config value (repeatable)")
        sp.add_argument("--profile", metavar="NAME",
                        help="apply the sweep file's profiles.NAME (same as --set profile=NAME)")
        if name == "export":
            sp.add_argument("--arm", required=True, help="the arm as the arm table names it (e.g. CD-EARLY-157)")
            sp.add_argument("--seed", type=int, required=True)
            sp.add_argument("--q", type=float, default=None, help="the arm's q, where it has several")
            sp.add_argument("--step", default="best",
                            help="best (lowest eval perplexity), final, a milestone, or words: every "
                                 "word-count checkpoint (train.checkpoint_words), one chck_<N>M folder each")
            sp.add_argument("--out", required=True, help="a new or empty folder")
        if name == "plan":
            sp.add_argument("--gpus", type=int, default=None, metavar="N",
                            help="state the schedule's makespan on N GPUs (the cluster the sweep targets)")
        if name in ("sweep", "run"):
            sp.add_argument("--verbose", action="store_true",
                            help="show Ray's, Tune's and MLflow's own output here instead of in the log file")
    text = "run a lean MLflow tracking server (sqlite backend, proxied artifacts) in the foreground"
    ml = sub.add_parser("mlflow", help=text, description=text)
    ml.add_argument("--root", default=".cdray/mlflow-server", help="directory of mlflow.db and artifacts")
    ml.add_argument("--port", type=int, default=5000)
    ml.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback: reach it by a tunnel)")
    ml.add_argument("--artifacts", default=None, help="artifact destination URI (default ROOT/artifacts)")
    data = sub.add_parser("data", help="data sets: `fetch-eval` downloads the BabyLM 2025 evaluation data",
                          description="data sets cdray reads but does not build")
    data.add_argument("action", choices=["fetch-eval"],
                      help="fetch-eval: download eval.fetch_url and install it at eval.babylm_dir")
    data.add_argument("config", help="sweep / config YAML file")
    data.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=v",
                      help="override one config value (repeatable)")
    data.add_argument("--profile", metavar="NAME",
                      help="apply the sweep file's profiles.NAME (same as --set profile=NAME)")
    return p


def _root_cause(exc: BaseException) -> BaseException:
    """Unwrap Ray's task / training wrappers to the user-facing error."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if isinstance(inner, BaseException):
            exc = inner
            continue
        # Ray Train wraps worker errors in a group of per-rank errors
        worker_errors = getattr(exc, "worker_failures", None) or {}
        if worker_errors:
            exc = next(iter(worker_errors.values()))
            continue
        break
    return exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    previous = sigterm_interrupts()
    try:
        return _main(args)
    finally:
        _stop_local_ray()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_local_ray() -> None:
    """Shut down the Ray cluster this process started or attached to (a no-op without Ray)."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()


def _main(args) -> int:
    try:
        if args.command == "mlflow":
            from cdray.tracking.server import serve

            return serve(args.root, args.port, args.host, args.artifacts)
        if args.profile:
            args.overrides = [f"profile={args.profile}", *args.overrides]
        cfg = config_mod.load(args.config, args.overrides)
        if args.command in ("sweep", "run") and in_job():
            cfg = _leave_job_working_dir(cfg)
        if args.command == "plan":
            from cdray.sweep.plan import print_plan

            if args.gpus is not None and args.gpus < 1:
                raise config_mod.ConfigError("--gpus", f"{args.gpus} must be >= 1")
            plain = config_mod.load(args.config, args.overrides, profiles=False) if cfg.profile else None
            print_plan(cfg, gpus=args.gpus, without_profile=plain)
        elif args.command in ("sweep", "run"):
            keep_on_loopback(cfg.ray)  # before the driver imports ray
            from cdray.shell.driver import run_sweep

            run_sweep(cfg, use_tune=args.command == "sweep", verbose=args.verbose)
            _next_steps(args.config, args.overrides, cfg)
        elif args.command == "report":
            from cdray.sweep.report import report_from_mlflow, write_report

            report_from_mlflow(cfg)
            write_report([cfg, *(config_mod.load(p, args.overrides) for p in args.more)])
        elif args.command == "verify":
            return _verify(cfg)
        elif args.command == "export":
            from cdray.sweep.export import export

            out = export(cfg, args.arm, args.seed, args.step, Path(args.out), q=args.q)
            print(f"[cdray] exported to {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it")
        elif args.command == "data":
            return _fetch_eval(cfg)
    except KeyboardInterrupt:
        print("cdray: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and a non-zero exit
        line = error_line(exc)
        if line is None:
            _raise_masked(exc)
        print(line, file=sys.stderr)
        return 2
    return 0


# user-facing failures (bad config, bad input files, unreachable services, full disks); anything
# else is a bug in cdray and keeps its traceback
KNOWN_ERRORS = (config_mod.ConfigError, ValueError, OSError, RuntimeError, LookupError)


def error_line(exc: BaseException) -> Optional[str]:
    """The one line `cdray: error: ...` a user sees for exc, or None for an unexpected bug.

    Every URI in it is masked: pyarrow, urllib and MLflow quote the addresses they failed on,
    credentials included. MLflow's own errors (a refused request, a bad store) are the user's
    to fix, not cdray bugs, so they are one line too."""
    from cdray.common.redaction import mask_text

    cause = _root_cause(exc)
    if isinstance(cause, KNOWN_ERRORS):
        return f"cdray: error: {mask_text(_one_line(cause))}"
    if type(cause).__module__.startswith("mlflow"):
        return f"cdray: error: MLflow: {mask_text(_one_line(cause))}"
    return None


def _next_steps(config: str, overrides: list[str], cfg) -> None:
    """The commands to run next, with this run's overrides (a report must read the same store)."""
    import shlex

    from cdray.common.redaction import mask_text, mask_uri
    from cdray.tracking.runs import resolve_uri

    uri = mask_uri(os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(cfg.tracking.uri))
    report = mask_text(" ".join(["cdray report", shlex.quote(config),
                                 *(f"--set {shlex.quote(o)}" for o in overrides)]))
    print(f"next: {report}   (the paper's tables and figures)\n"
          f"      mlflow ui --backend-store-uri {uri}   (compare the arms: open a sweep's run, select its children)")


def _raise_masked(exc: BaseException) -> None:
    """Re-raise an unexpected error for its traceback, its message's URIs masked first."""
    from cdray.common.redaction import mask_text

    if exc.args and isinstance(exc.args[0], str):
        exc.args = (mask_text(exc.args[0]), *exc.args[1:])
    raise exc


def _leave_job_working_dir(cfg):
    """Inside `ray job submit`: anchor relative paths, then leave the job's working dir.

    Ray unpacks a job's working dir once per node, deleting and re-creating it; where nodes share a
    disk (the fake multi-node cluster, some NFS set-ups) that deletes the driver's cwd mid-run, and
    every later os.getcwd() fails. Imports keep working through the absolute sys.path entry."""
    from cdray.sweep.plan import anchored

    here = os.getcwd()
    cfg = anchored(cfg)
    sys.path[:] = [here if p in ("", ".") else p for p in sys.path]
    if here not in sys.path:
        sys.path.insert(0, here)
    os.chdir(tempfile.gettempdir())
    return cfg


def _fetch_eval(cfg) -> int:
    from cdray.eval.fetch import DOCS_HINT, fetch_eval

    if not cfg.eval.babylm_dir:
        raise config_mod.ConfigError("eval.babylm_dir", "set it to where the evaluation data should go")
    from cdray.common.uris import is_remote
    from cdray.data.source_files import resolve
    from cdray.eval.babylm import FOLDERS, missing_reason

    dest = resolve(cfg.eval.babylm_dir, cfg.data_root)  # a relative folder is under data_root
    if missing_reason(dest, FOLDERS) is None:
        print(f"BabyLM evaluation data already complete at {dest}")
        return 0
    if is_remote(dest):
        raise config_mod.ConfigError("eval.babylm_dir", "fetch-eval installs into a local folder: fetch it "
                                     "there, then copy it to the bucket (docs/cluster.md)")
    if not cfg.eval.fetch_url:
        raise config_mod.ConfigError("eval.fetch_url", f"set it to the URL of {DOCS_HINT}")
    done = fetch_eval(cfg.eval.fetch_url, dest, cfg.eval.fetch_sha256)
    if done["downloaded"]:
        print(f"BabyLM evaluation data installed at {done['dest']} (the archive's sha256: {done['sha256']}; "
              f"set eval.fetch_sha256 to it to check the next download)")
    for line in done["missing"]:
        print(f"cdray: error: eval.babylm_dir {done['dest']}: {line}", file=sys.stderr)
    if done["missing"]:
        return 1
    if not done["downloaded"]:
        print(f"BabyLM evaluation data already complete at {done['dest']}")
    return 0


def _verify(cfg) -> int:
    from cdray.dag.store import Store

    store = Store.at(cfg.store.root, cfg.store.cache)
    bad_total = 0
    built = store.list()
    if not built:  # a mistyped store.root must not read as a clean bill of health
        print(f"no artifacts in the store at {store.location}: nothing is built there yet")
        return 0
    for stage, key in built:
        bad = store.verify(stage, key)
        bad_total += len(bad)
        for path in bad:
            print(f"corrupt: {stage}/{key}: {path}")
    print(f"verified {len(built)} artifacts: {'all intact' if not bad_total else f'{bad_total} corrupt files'}")
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
