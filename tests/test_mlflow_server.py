"""The lean MLflow server command (the end-to-end cluster test runs a real one)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cdray.tracking import server as mlflow_server


def test_server_command_is_lean_loopback_sqlite_and_proxied(tmp_path):
    cmd = mlflow_server.server_command(tmp_path, 5123)
    text = " ".join(cmd)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert f"--backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in text
    assert "--serve-artifacts" in cmd and (tmp_path / "artifacts").resolve().as_uri() in cmd
    assert "--host 127.0.0.1" in text and "--port 5123" in text and "--workers 1" in text
    assert mlflow_server.LEAN_ENV == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert "s3://b/mlflow" in mlflow_server.server_command(tmp_path, 1, artifacts="s3://b/mlflow")


def test_free_port_is_bindable():
    import socket

    port = mlflow_server.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cli_profile_flag_errors_name_the_field():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "cdray.cli", "plan", "sweeps/tiny.yaml", "--profile", "nope"],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("cdray: error: config field 'profile': 'nope' is not one of the sweep "
                                  "file's profiles ['cluster']")


def test_a_server_on_a_non_private_address_answers_clients_that_use_it(tmp_path):
    """MLflow refuses Host headers other than localhost and private addresses (DNS rebinding): a
    head listening on a public or documentation-range address must allow its own."""
    import ray._private.services as services
    from mlflow.tracking import MlflowClient

    host = services.node_ip_address_from_perspective()
    cmd = mlflow_server.server_command(tmp_path, 5123, host=host)
    assert f"{host}:5123" in cmd[cmd.index("--allowed-hosts") + 1]
    assert "--allowed-hosts" not in mlflow_server.server_command(tmp_path, 5123)  # loopback: MLflow's own
    port = mlflow_server.free_port()
    proc = mlflow_server.start(tmp_path / "m", port, host=host)
    try:
        mlflow_server.wait_ready(f"http://{host}:{port}", proc=proc)
        assert MlflowClient(tracking_uri=f"http://{host}:{port}").create_experiment("reachable")
    finally:
        mlflow_server.stop(proc)
