"""MLflow helpers: one parent run per sweep, one child run per cell (a null tracker when disabled)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

from cdray.common.redaction import mask_uri, without_userinfo
from cdray.config import TrackingConfig

SWEEP_TAG = "cdray.sweep_key"
FAMILY_TAG = "cdray.sweep_family"
CELL_TAG = "cdray.cell_id"
PARENT_TAG = "mlflow.parentRunId"


def resolve_uri(uri: str) -> str:
    """Make a relative sqlite path absolute so Ray workers in other directories share one DB."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def probe(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable tracking server: MLflow's own client retries for minutes."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        # /health answers without credentials; any HTTP status proves a server is listening
        urllib.request.urlopen(without_userinfo(uri).rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking.uri {mask_uri(uri)!r}: cannot reach the MLflow server ({reason})") from None


class Tracker:
    """Thin wrapper over MlflowClient; every call is idempotent so re-runs reuse runs."""

    def __init__(self, cfg: TrackingConfig):
        from mlflow.tracking import MlflowClient

        self.enabled = cfg.enabled
        self.uri = resolve_uri(os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri)
        self.experiment_name = cfg.experiment
        if self.enabled:
            probe(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri) if self.enabled else None
        self._experiment_id: Optional[str] = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            try:
                exp = self.client.get_experiment_by_name(self.experiment_name)
                self._experiment_id = (exp.experiment_id if exp is not None
                                       else self.client.create_experiment(self.experiment_name))
            except Exception as e:  # noqa: BLE001 - any backend failure means the URI is unusable
                raise TrackingError(f"tracking.uri {mask_uri(self.uri)!r}: cannot reach MLflow ({type(e).__name__})") from None
        return self._experiment_id

    def _find(self, filter_string: str) -> Optional[Any]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def parent_run(self, sweep_name: str, family: str, sweep_key: str, params: dict) -> Optional[str]:
        """The sweep's parent run: the one of its family (its name and recipe: a grid that grew
        keeps its parent) or, for a run made before families, of this very sweep; else a new one.
        `params` (the recipe) are logged once, at creation; the grid, which may grow, is in the
        resolved config the driver writes as the run's artifact each time."""
        if not self.enabled:
            return None
        found = self._parent(family, sweep_key)
        if found is not None:
            if found.info.status != "RUNNING":
                self.client.update_run(found.info.run_id, status="RUNNING")
            self.set_tags(found.info.run_id, {SWEEP_TAG: sweep_key, FAMILY_TAG: family})
            return found.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=sweep_name,
                                     tags={SWEEP_TAG: sweep_key, FAMILY_TAG: family, "cdray.kind": "sweep"})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def _parent(self, family: str, sweep_key: str) -> Optional[Any]:
        return (self._find(f"tags.`{FAMILY_TAG}` = '{family}' and tags.`cdray.kind` = 'sweep'")
                or self._find(f"tags.`{SWEEP_TAG}` = '{sweep_key}' and tags.`cdray.kind` = 'sweep'"))

    def child_run(self, parent_id: Optional[str], cell_id: str, run_name: str) -> tuple[Optional[str], bool]:
        """(run id, already finished) of a cell's child run, created if missing."""
        if not self.enabled or parent_id is None:
            return None, False
        found = self._find(f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{CELL_TAG}` = '{cell_id}'")
        if found is not None:
            return found.info.run_id, found.info.status == "FINISHED"
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={PARENT_TAG: parent_id, CELL_TAG: cell_id, "cdray.kind": "cell"})
        return run.info.run_id, False

    def child_finished(self, parent_id: Optional[str], cell_id: str) -> bool:
        if not self.enabled or parent_id is None:
            return True
        found = self._find(f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{CELL_TAG}` = '{cell_id}'")
        return found is not None and found.info.status == "FINISHED"

    def children(self, parent_id: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                       max_results=10000)

    def find_parent(self, family: str, sweep_key: str) -> Optional[str]:
        found = self._parent(family, sweep_key)
        return found.info.run_id if found else None

    def log_params(self, run_id: Optional[str], params: dict) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Param

        flat = {k: v for k, v in _flatten(params).items() if v is not None}
        items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: Optional[str], rows: list[tuple[str, float, int]],
                    timestamp_ms: Optional[int] = None) -> None:
        """rows: (name, value, step). A fixed timestamp makes re-logging the same rows a no-op
        (MLflow drops exact duplicates), so a cell logged again after a crash has no doubled history."""
        if not self.enabled or run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in rows if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def set_tags(self, run_id: Optional[str], tags: dict) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, run_id: Optional[str], name: str, uri: str, digest: str, context: str) -> None:
        """Record a corpus as a run input; its digest is the store key."""
        if not self.enabled or run_id is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow registers two equivalent local-file sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        ds = MetaDataset(source, name=name, digest=digest)
        self.client.log_inputs(run_id, datasets=[DatasetInput(
            ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])])

    def log_text(self, run_id: Optional[str], text: str, name: str) -> None:
        if self.enabled and run_id is not None:
            self.client.log_text(run_id, text, name)

    def log_file(self, run_id: Optional[str], path: Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled and run_id is not None:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: Optional[str], status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status=status)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out
