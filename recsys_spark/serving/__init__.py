"""Production artifacts: the final job's explained lists as an MLflow pyfunc model, registered as the champion.

The served model is the final job's output, not a refit: the lists every user
gets in batch (``final/recommendations``) are the lists the server answers
with, so online and batch answers agree by construction, and a request costs
one dictionary lookup (no Spark, no model arithmetic).  The publish stage
(:mod:`recsys_spark.stages.publish`) writes the lists, the cold-start list and
a small ``meta.json`` as the model's data, logs them as an MLflow model whose
loader is the stand-alone :mod:`recsys_spark.serving.recsys_spark_champion`
(shipped in the model's ``code/``; nothing of ours is pickled), registers a
new version of ``publish.model_name`` and points the alias ``champion`` at it.

Serve it with ``mlflow models serve -m models:/<name>@champion --env-manager local``;
score in batch with :func:`batch_udf` (``mlflow.pyfunc.spark_udf``).  A new
user, or one without ratings, gets the cold-start list and ``known = false``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.config import Config
from recsys_spark.schemas import COL_ITEM_ID, COL_RANK, COL_SCORE, COL_SOURCE, COL_TITLE, COL_USER_ID

log = logging.getLogger(__name__)

LOADER_MODULE = "recsys_spark_champion"
ARTIFACT_PATH = "champion"
# the output of the pyfunc model, as a Spark type (mlflow.pyfunc.spark_udf's result_type)
RESULT_TYPE = (
    "user_id string, known boolean, source string, item_ids array<string>, titles array<string>, "
    "scores array<double>, explanations array<string>"
)


def write_artifacts(table: DataFrame, cold: DataFrame, meta: dict[str, Any], dest: Path) -> dict[str, int]:
    """The model's data under ``dest``: ``lists.parquet``, ``cold_start.parquet`` and ``meta.json``.

    The lists come to the driver as Arrow (about 200 bytes a row: 1.4M rows, a
    few hundred MB, for 138K users with k = 10) and are written there, so a
    cluster run and a local run write the same local files for MLflow to log.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    title = F.coalesce(F.col(COL_TITLE), F.col(COL_ITEM_ID)).alias(COL_TITLE)
    lists = table.select(
        F.col(COL_USER_ID).cast("string").alias("user_id"), F.col(COL_RANK).cast("int").alias("rank"),
        F.col(COL_ITEM_ID).cast("string").alias("item_id"), title, F.col(COL_SCORE).cast("double").alias("score"),
        "explanation", COL_SOURCE,
    )  # fmt: skip
    cold_rows = cold.select(
        F.col(COL_RANK).cast("int").alias("rank"), F.col(COL_ITEM_ID).cast("string").alias("item_id"), title,
        F.col(COL_SCORE).cast("double").alias("score"), "explanation",
    )  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    arrow = lists.toArrow()
    pq.write_table(arrow, dest / "lists.parquet")
    cold_arrow = cold_rows.toArrow()
    if cold_arrow.num_rows == 0:
        raise ValueError("publish: the final job's cold-start list is empty (no ratings to rank items by?)")
    pq.write_table(cold_arrow, dest / "cold_start.parquet")
    (dest / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    users = pc.count_distinct(arrow.column("user_id")).as_py()
    return {"rows": arrow.num_rows, "users": users, "cold_start_rows": cold_arrow.num_rows}


def signature() -> Any:
    """Input: ``user_id`` (required), ``k`` and ``exclude`` (optional); output: one row per input row."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    s = DataType.string
    inputs = Schema([ColSpec(s, "user_id"), ColSpec(DataType.long, "k", required=False), ColSpec(Array(s), "exclude", required=False)])
    outputs = Schema([
        ColSpec(s, "user_id"), ColSpec(DataType.boolean, "known"), ColSpec(s, "source"), ColSpec(Array(s), "item_ids"),
        ColSpec(Array(s), "titles"), ColSpec(Array(DataType.double), "scores"), ColSpec(Array(s), "explanations"),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    """What the loader imports, pinned to this environment's versions."""
    import mlflow
    import numpy
    import pandas
    import pyarrow

    return [f"{m.__name__}=={m.__version__}" for m in (mlflow, numpy, pandas, pyarrow)]


def register(
    cfg: Config, data: Path, card: Path, metrics: dict[str, float], params: dict[str, Any], example_user: str,
) -> dict[str, Any]:  # fmt: skip
    """Log the model (with the card), register a new version of ``publish.model_name`` and move the alias to it."""
    import mlflow
    import pandas as pd

    from recsys_spark import tracking

    uri, client = tracking.use(cfg)
    exp_id = tracking.experiment_id(cfg, client)
    name, alias = model_name(cfg), cfg.publish.alias
    # the loader's source beside the data (inspect reads it from a zip too, as under spark-submit --py-files)
    from recsys_spark.serving import recsys_spark_champion

    loader = data.parent / f"{LOADER_MODULE}.py"
    loader.write_text(inspect.getsource(recsys_spark_champion))
    with mlflow.start_run(experiment_id=exp_id, run_name=f"publish {cfg.dataset_name}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({tracking._clean(k): float(v) for k, v in metrics.items()})
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH, loader_module=LOADER_MODULE, data_path=str(data), code_paths=[str(loader)],
            signature=signature(), input_example=pd.DataFrame({"user_id": [example_user], "k": [3]}),
            pip_requirements=requirements(), registered_model_name=name,
        )  # fmt: skip
        mlflow.log_artifact(str(card))
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    client.update_model_version(name, version, description=card.read_text()[:5000])
    log.info("publish: registered %s version %s as @%s (run %s, tracking %s)", name, version, alias, run.info.run_id, uri)
    return {"model_name": name, "version": version, "alias": alias, "model_uri": f"models:/{name}@{alias}",
            "run_id": run.info.run_id, "tracking_uri": uri}  # fmt: skip


def model_name(cfg: Config) -> str:
    return cfg.publish.model_name or f"recsys-spark-{cfg.dataset_name}"


def load(cfg: Config, alias: str | None = None) -> Any:
    """The registered model behind ``alias`` (default ``publish.alias``) as a pyfunc model."""
    import mlflow

    from recsys_spark import tracking

    tracking.use(cfg)
    return mlflow.pyfunc.load_model(f"models:/{model_name(cfg)}@{alias or cfg.publish.alias}")


def batch_udf(spark: SparkSession, cfg: Config, alias: str | None = None) -> Any:
    """``mlflow.pyfunc.spark_udf`` of the registered model: call it on ``struct("user_id")`` (one row per user)."""
    import mlflow

    from recsys_spark import tracking

    tracking.use(cfg)
    return mlflow.pyfunc.spark_udf(
        spark, f"models:/{model_name(cfg)}@{alias or cfg.publish.alias}", result_type=RESULT_TYPE, env_manager="local"
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(cfg: Config, alias: str | None = None, port: int | None = None, timeout_s: float = 180.0, log_file: Path | None = None):
    """``mlflow models serve`` of ``models:/<name>@<alias>`` on 127.0.0.1; yields the base URL, stops it by its pid.

    The server runs in this environment (``--env-manager local``) in its own
    process group; the wait for ``/ping`` is a bounded loop, and a server that
    exits or does not answer in ``timeout_s`` is a ``RuntimeError`` with the
    end of its log.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from recsys_spark import tracking

    uri, _ = tracking.tracking_uri(cfg)
    port = port or free_port()
    model_uri = f"models:/{model_name(cfg)}@{alias or cfg.publish.alias}"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # the server execs uvicorn by name: this environment's bin first on PATH
    path = os.pathsep.join([str(mlflow_cli.parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "PATH": path}
    out = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = log_file.read_text()[-2000:] if log_file else ""
                raise RuntimeError(f"mlflow models serve {model_uri} exited with {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve {model_uri} did not answer /ping on {url} within {timeout_s:.0f} s")
            time.sleep(0.5)
        log.info("serving %s on %s (pid %d)", model_uri, url, proc.pid)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        if log_file:
            out.close()
