"""Screenshot MLflow's run comparison of a sweep's cells (headless Chromium, Debian's `chromium`).

    python docs/mlflow_screenshot.py .cdray/mlflow.db docs/mlflow-compare.png [--experiment cdray]

The database is copied, served by cdray's lean MLflow server on a free loopback port, and the
compare-runs page of the newest sweep's finished child runs is captured through the DevTools protocol
(the UI is a single-page app: it needs time to render, which `chromium --screenshot` does not give).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cdray.tracking import server as mlflow_server

# the assistant side panel hides part of the comparison: close it (the rightmost button of the
# top bar); show only the parameters that
# differ between the cells (arm, amateur, k, q, ...) so the metrics fit on the page
TIDY_PAGE = """
const closers = [...document.querySelectorAll('button')].filter(b => {
  const r = b.getBoundingClientRect();
  return r.width > 0 && r.top < 80 && r.left > window.innerWidth * 0.75;
});
if (closers.length) closers.sort((a, b) => b.getBoundingClientRect().left - a.getBoundingClientRect().left)[0].click();
const switches = document.querySelectorAll('[role=switch]');
if (switches.length) switches[0].click();
"""


def sweep_runs(db: Path, experiment: str) -> tuple[str, list[str]]:
    con = sqlite3.connect(db)
    (exp_id,) = con.execute("select experiment_id from experiments where name = ?", (experiment,)).fetchone()
    (parent,) = con.execute(
        "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where r.experiment_id = ? "
        "and t.key = 'cdray.kind' and t.value = 'sweep' order by r.start_time desc limit 1", (exp_id,)).fetchone()
    children = [r for (r,) in con.execute(
        "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'mlflow.parentRunId' "
        "and t.value = ? and r.status = 'FINISHED' order by r.name", (parent,))]
    return str(exp_id), children


async def capture(url: str, out: Path, width: int, height: int, wait: float) -> None:
    import aiohttp

    port = mlflow_server.free_port()
    profile = tempfile.mkdtemp(prefix="cdray-chromium-")
    proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             f"--window-size={width},{height}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [p for p in json.loads(r.read()) if p["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                counter = 0

                async def call(method: str, **params) -> dict:
                    nonlocal counter
                    counter += 1
                    await ws.send_json({"id": counter, "method": method, "params": params})
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("id") == counter:
                            return data.get("result", {})
                    raise RuntimeError("DevTools connection closed")

                await call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                           deviceScaleFactor=1, mobile=False)
                await call("Page.navigate", url=url)
                await asyncio.sleep(wait)  # the SPA fetches runs and draws its charts
                await call("Runtime.evaluate", expression=TIDY_PAGE)
                await asyncio.sleep(2)
                shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--experiment", default="cdray")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2000)  # down to the metrics table
    ap.add_argument("--wait", type=float, default=40.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cdray-shot-"))
    shutil.copy(args.db, root / "mlflow.db")
    exp_id, runs = sweep_runs(root / "mlflow.db", args.experiment)
    port = mlflow_server.free_port()
    server = mlflow_server.start(root, port)
    try:
        mlflow_server.wait_ready(f"http://127.0.0.1:{port}", timeout=300, proc=server)
        query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([exp_id])})
        url = f"http://127.0.0.1:{port}/#/compare-runs?{query}"
        asyncio.run(capture(url, args.out, args.width, args.height, args.wait))
        print(f"{args.out}: {len(runs)} runs compared ({url})")
    finally:
        mlflow_server.stop(server)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
