"""Command line: `cdray run|plan|sweep|report|verify CONFIG [--set a.b=v ...]`."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from cdray import config as config_mod


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdray", description="Contrastive-decoding synthetic-data sweeps on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "sweep": "run a sweep: shared stages once, cells as a Ray Tune run, tracked in MLflow",
        "run": "build every stage of a config in order, without Ray Tune (debugging, single cells)",
        "plan": "list every stage of a config with its store key and whether it is cached",
        "report": "the arm table from MLflow, and the paper's table and figures (markdown, PNG) logged to MLflow",
        "verify": "check every artifact of the store against its manifest checksums",
    }
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("config", help="sweep / config YAML file")
        if name == "report":
            sp.add_argument("more", nargs="*", metavar="SWEEP.yaml",
                            help="more sweeps (e.g. the settings of a truncation sweep) for one report")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=v",
                        help="override one config value (repeatable)")
    data = sub.add_parser("data", help="data sets: `fetch-eval` downloads the BabyLM 2025 evaluation data",
                          description="data sets cdray reads but does not build")
    data.add_argument("action", choices=["fetch-eval"],
                      help="fetch-eval: download eval.fetch_url and install it at eval.babylm_dir")
    data.add_argument("config", help="sweep / config YAML file")
    data.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=v",
                      help="override one config value (repeatable)")
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
    try:
        cfg = config_mod.load(args.config, args.overrides)
        if args.command == "plan":
            from cdray.sweep import print_plan

            print_plan(cfg)
        elif args.command == "sweep":
            from cdray.sweep import run_sweep

            run_sweep(cfg, use_tune=True)
        elif args.command == "run":
            from cdray.sweep import run_sweep

            run_sweep(cfg, use_tune=False)
        elif args.command == "report":
            from cdray.sweep import report_from_mlflow, write_report

            report_from_mlflow(cfg)
            write_report([cfg, *(config_mod.load(p, args.overrides) for p in args.more)])
        elif args.command == "verify":
            return _verify(cfg)
        elif args.command == "data":
            return _fetch_eval(cfg)
    except KeyboardInterrupt:
        print("cdray: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and a non-zero exit
        cause = _root_cause(exc)
        known = (config_mod.ConfigError, ValueError, OSError, RuntimeError, LookupError)
        if not isinstance(cause, known):
            raise
        print(f"cdray: error: {_one_line(cause)}", file=sys.stderr)
        return 2
    return 0


def _fetch_eval(cfg) -> int:
    from cdray.fetch_eval import DOCS_HINT, fetch_eval

    if not cfg.eval.babylm_dir:
        raise config_mod.ConfigError("eval.babylm_dir", "set it to where the evaluation data should go")
    from cdray.babylm import FOLDERS, missing_reason

    if missing_reason(cfg.eval.babylm_dir, FOLDERS) is None:
        print(f"BabyLM evaluation data already complete at {cfg.eval.babylm_dir}")
        return 0
    if not cfg.eval.fetch_url:
        raise config_mod.ConfigError("eval.fetch_url", f"set it to the URL of {DOCS_HINT}")
    done = fetch_eval(cfg.eval.fetch_url, cfg.eval.babylm_dir, cfg.eval.fetch_sha256)
    what = "installed" if done["downloaded"] else "already complete"
    print(f"BabyLM evaluation data {what} at {done['dest']}")
    return 0


def _verify(cfg) -> int:
    from cdray.store import Store

    store = Store.at(cfg.store.root)
    bad_total = 0
    for stage, key in store.list():
        bad = store.verify(stage, key)
        bad_total += len(bad)
        for path in bad:
            print(f"corrupt: {stage}/{key}: {path}")
    print(f"verified {len(store.list())} artifacts: {'all intact' if not bad_total else f'{bad_total} corrupt files'}")
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
