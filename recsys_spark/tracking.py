"""MLflow tracking: a SQLite store and file artifacts under the output directory by default.

The tracking URI is, in order: ``tracking.uri`` from the config,
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<paths.output>/mlflow.db`` with
artifacts in ``<paths.output>/mlartifacts`` (MLflow 3 deprecates the plain
``./mlruns`` file store).  ``mlflow`` is imported lazily: it is slow to import
and only the evaluate stage needs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from recsys_spark.config import Config

log = logging.getLogger(__name__)


def tracking_uri(cfg: Config) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri, None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, None
    out = Path(cfg.paths.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}", (out / "mlartifacts").as_uri()


def log_run(cfg: Config, run_name: str, params: dict[str, Any], metrics: dict[str, float], artifacts: list[str]) -> str:
    """Log one run; return its id."""
    import mlflow

    uri, artifact_location = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({_clean(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        for path in artifacts:
            mlflow.log_artifact(path)
    log.info("logged MLflow run %s to %s (experiment %s)", run.info.run_id, uri, cfg.tracking.experiment)
    return run.info.run_id


def _clean(name: str) -> str:
    # MLflow metric names: alphanumerics, _ - . space : / ; '@' is not allowed
    return name.replace("@", "_at_")


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(key, v))
        else:
            out[key] = v
    return out
