"""A lean MLflow tracking server (sqlite backend, proxied artifacts, loopback) for a cluster's head."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

# MLflow's job-execution workers cost ~2 GB of memory that a tracking server never uses
LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(root: Path, port: int, host: str = "127.0.0.1",
                   artifacts: Optional[str] = None) -> list[str]:
    """`mlflow server` for `root`/mlflow.db, artifacts proxied from `artifacts` (default root/artifacts,
    or any URI the server can write, e.g. s3://bucket/mlflow)."""
    root = Path(root).expanduser().resolve()
    destination = artifacts or (root / "artifacts").as_uri()
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", destination, "--serve-artifacts",
               "--host", host, "--port", str(port), "--workers", "1"]
    if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
        # MLflow answers only Host headers of localhost and private addresses unless told: the
        # address it was asked to listen on is the one its clients use (a head's public or on-prem IP)
        names = [host, "localhost", "127.0.0.1"]
        command += ["--allowed-hosts", ",".join(f"{n},{n}:{port}" for n in names)]
    return command


def start(root: Path, port: int, host: str = "127.0.0.1", artifacts: Optional[str] = None,
          log: Optional[Path] = None) -> subprocess.Popen:
    """Start the server in its own process group (so it can be stopped alone, by that group)."""
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    out = open(log or root / "server.log", "ab")
    env = {**os.environ, **LEAN_ENV}
    return subprocess.Popen(server_command(root, port, host, artifacts), stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def wait_ready(url: str, timeout: float = 120.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Block until GET {url}/health answers, or raise (with the process's exit code if it died)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a server started by `start` (its process group: the gunicorn/uvicorn workers too)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


def serve(root: str, port: int, host: str = "127.0.0.1", artifacts: Optional[str] = None) -> int:
    """`cdray mlflow`: run the server in the foreground until interrupted."""
    with socket.socket() as probe:  # a busy port is one line now, not a server log later
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None
    proc = start(Path(root), port, host, artifacts)
    url = f"http://{host}:{port}"
    try:
        wait_ready(url, proc=proc)
        print(f"MLflow tracking server at {url} (store {Path(root).resolve()}); "
              f"export MLFLOW_TRACKING_URI={url}; Ctrl-C stops it", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
