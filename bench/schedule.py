"""The sweep's schedule on a multi-node cluster: wall time of a miniature paper-shaped DAG against
max(critical path, total work / slots), with stages that hold their resources for set times.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/schedule.py                       # this checkout (~12 min on 2 cores)
    .venv/bin/python bench/schedule.py --code ../old-cdray   # another checkout's driver, same DAG
    .venv/bin/python bench/schedule.py --quick               # short holds, 2 cells: a smoke test

The cluster is tests/node_cluster.py's: a head with no CPUs (the driver's) and three worker nodes
of 2 CPUs, each with a /tmp of its own; the store and the corpus on moto's S3 server; MLflow on the
head's address. The DAG: the GOOD (whose seed-43 BASELINE it is), a SMALL amateur, three
synthetic corpora (CD-EARLY, CD-SMALL, NO-CONTRAST), BASELINE and mixed cells for two seeds. Each
training run, generation actor and evaluation holds its CPU for the seconds $CDRAY_HOLD_SECONDS
gives it (cdray.common.faults.hold_seconds), so that this host's 2 cores do not blur the schedule;
the micro models' own work adds seconds. At most 6 cells run at once. On this DAG and these
slots the schedule model (cdray.sweep.schedule) reaches the bound: what the wall time adds to it is
the dispatch's own cost (Ray Train and actor start-up, the store, MLflow). Printed, from this run:
  wall_s          the sweep's wall time (driver start to exit)
  bound_s         max(critical path, total held work / 6 slots) of the same DAG and holds
  wall_vs_bound   wall_s / bound_s; goal <= 1.15
  serial_s        what the schedule model gives the serial upstream (the driver's old loop)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from store_footprint import S3_ENV  # noqa: E402

SLOTS = 6  # three worker nodes of 2 CPUs


def moto(ip: str) -> tuple[str, str]:
    """moto's S3 server on the cluster's address: (endpoint, bucket)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=ip, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
    return f"{host}:{port}", "bench"


def sweep_dict(corpus_uri: str, store_uri: str, mlflow_url: str, quick: bool = False) -> dict:
    from conftest import micro_sweep_dict

    # --quick: the GOOD, one corpus, a BASELINE and a mixed cell (the code path, in a few minutes)
    grid = (dict(k=[4], r=[], strategy=["no_contrast"], q=[0.0, 0.5], seed=[42]) if quick else
            dict(k=[4], r=[2], strategy=["contrastive", "no_contrast"], q=[0.0, 0.5], seed=[42, 43]))
    d = micro_sweep_dict(Path("/unused"), Path("/unused"), **grid)
    d["corpus"]["sources"][0]["path"] = corpus_uri
    d["store"] = {"root": store_uri}
    d["tracking"] = {"uri": mlflow_url, "experiment": "schedule"}
    d["ray"] = {"max_concurrent_cells": SLOTS}
    d["generation"].update(actors=1, actor_cpus=1.0)
    d["name"] = "schedule"
    return d


def holds_of(spec: str) -> dict[str, float]:
    return {k.strip(): float(v) for k, _, v in (p.partition("=") for p in spec.split(","))}


def predicted(d: dict, holds: dict[str, float]) -> dict[str, float]:
    """The schedule model (cdray.sweep.schedule) on this DAG with the held seconds as stage lengths."""
    from cdray.sweep.schedule import Job, critical_path, simulate

    graph = _graph(d)
    order = graph.build_order()
    owner = {(n.stage, n.key): i for i, c in enumerate(graph.cells) for n in c.nodes()}
    shared = {(n.stage, n.key) for n in graph.upstream()}
    todo = [Job((n.stage, n.key), holds.get(n.stage, 0.0), 1 if n.stage in holds else 0,
                tuple((x.stage, x.key) for _, x in n.inputs),
                None if (n.stage, n.key) in shared else owner.get((n.stage, n.key))) for n in order]
    work = sum(j.seconds * j.slots for j in todo)
    cells = d["ray"]["max_concurrent_cells"]
    return {"critical": critical_path(todo), "work": work, "bound": max(critical_path(todo), work / SLOTS),
            "ready": simulate(todo, SLOTS, cells), "serial": simulate(todo, SLOTS, cells, serial_upstream=True)}


def _graph(d: dict):
    from cdray.config import from_dict
    from cdray.dag.graph import build_graph

    return build_graph(from_dict(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose cdray the driver and nodes run")
    ap.add_argument("--holds", default="train=120,generate=60,evaluate=20",
                    help="seconds each stage holds its CPU (stage=seconds,...)")
    ap.add_argument("--quick", action="store_true", help="holds of a few seconds: a smoke test")
    args = ap.parse_args()
    holds = holds_of("train=6,generate=3,evaluate=1" if args.quick else args.holds)
    code = Path(args.code).resolve()

    from conftest import upload_folder, write_text_corpus
    from node_cluster import LOCAL, make_cluster, namespaces_work

    from cdray.tracking import server

    why = namespaces_work()
    if why is not None:
        sys.exit(f"a cluster of nodes with disks of their own needs mount namespaces: {why}")
    spec = ",".join(f"{k}={v:g}" for k, v in holds.items())
    cluster = make_cluster(env={**S3_ENV, "CDRAY_HOLD_SECONDS": spec, "PYTHONPATH": str(code)})
    mlflow = None
    try:
        cluster.start()
        for name in ("a", "b", "c"):
            cluster.add_node(name, cpus=2)
        endpoint, bucket = moto(cluster.ip)
        tmp = Path(tempfile.mkdtemp(prefix="schedule-", dir=cluster.base))
        uri = lambda prefix: (f"s3://{bucket}/{prefix}?endpoint_override={endpoint}"  # noqa: E731
                              f"&scheme=http&region=us-east-1")
        corpus = upload_folder(write_text_corpus(tmp / "corpus"), uri("data/corpus"))
        port = server.free_port()
        mlflow = server.start(tmp / "mlflow", port, host=cluster.ip)
        url = f"http://{cluster.ip}:{port}"
        server.wait_ready(url, proc=mlflow)
        d = sweep_dict(corpus, uri("store"), url, args.quick)
        (cluster.node_dir("head") / "schedule.yaml").write_text(__import__("yaml").safe_dump(d))
        model = predicted(d, holds)
        print(f"code {code} ({_revision(code)}); holds {spec}; {SLOTS} slots on 3 nodes; "
              f"{len(_graph(d).cells)} cells")
        log = tmp / "driver.log"
        t0 = time.perf_counter()
        proc = cluster.driver([sys.executable, "-m", "cdray.cli", "sweep", f"{LOCAL}/schedule.yaml"], log=log,
                              cwd=code)
        rc = proc.wait(1800)
        wall = time.perf_counter() - t0
        if rc != 0:
            sys.exit(f"the sweep failed (exit {rc}):\n{log.read_text()[-4000:]}")
        print(f"model: critical path {model['critical']:.0f} s, held work {model['work']:.0f} s / {SLOTS} slots, "
              f"readiness schedule {model['ready']:.0f} s, serial upstream {model['serial']:.0f} s")
        print(f"wall_s={wall:.0f} bound_s={model['bound']:.0f} wall_vs_bound={wall / model['bound']:.2f} "
              f"serial_s={model['serial']:.0f}")
    finally:
        if mlflow is not None:
            server.stop(mlflow)
        cluster.stop()


def _revision(code: Path) -> str:
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "not a git checkout"


if __name__ == "__main__":
    main()
