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
from typing import Any

from recsys_spark.config import Config, ConfigError

log = logging.getLogger(__name__)


def tracking_uri(cfg: Config) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None).

    The SQLite default needs ``paths.output`` on this machine: with an output
    on another file system (``hdfs://``, ``s3a://``, ``dbfs:/``) and no URI
    set, :class:`ConfigError` says what to set (on Databricks, where
    ``DATABRICKS_RUNTIME_VERSION`` is set, the workspace's tracking server is
    the default).
    """
    if cfg.tracking.uri:
        return cfg.tracking.uri, None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, None
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "databricks", None
    from recsys_spark.io.datasets import is_local
    from recsys_spark.io.precheck import local_path

    if not is_local(cfg.paths.output):
        raise ConfigError(
            f"paths.output = {cfg.paths.output!r} is not on this machine, so the default MLflow store "
            "(sqlite under paths.output) cannot be used: set tracking.uri (an MLflow server such as "
            "'http://mlflow:5000', 'databricks', or 'sqlite:////local/dir/mlflow.db'), or MLFLOW_TRACKING_URI, "
            "or tracking.enabled = false"
        )
    out = local_path(cfg.paths.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}", (out / "mlartifacts").as_uri()


TRACKING_STAGES = ("pipeline", "evaluate", "publish", "train_torch", "tune")


def check(cfg: Config, stage: str) -> None:
    """Fail before Spark starts when ``stage`` would log to MLflow and no tracking location works."""
    if cfg.tracking.enabled and stage in TRACKING_STAGES:
        tracking_uri(cfg)


def use(cfg: Config) -> tuple[str, Any]:
    """Point MLflow's tracking and registry at the config's location; return ``(uri, MlflowClient)``."""
    import mlflow

    uri, _ = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri, mlflow.MlflowClient(uri, registry_uri=uri)


def experiment_id(cfg: Config, client: Any) -> str:
    """``tracking.experiment``'s id, created (with the default artifact location) when missing."""
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp:
        return exp.experiment_id
    return client.create_experiment(cfg.tracking.experiment, artifact_location=tracking_uri(cfg)[1])


def log_run(cfg: Config, run_name: str, params: dict[str, Any], metrics: dict[str, float], artifacts: list[str]) -> str:
    """Log one run; return its id."""
    import mlflow

    uri, client = use(cfg)
    exp_id = experiment_id(cfg, client)
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
