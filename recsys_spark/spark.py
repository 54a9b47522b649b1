"""The one Spark session factory.

The session always gets an app name, the configured shuffle partitions and a
checkpoint directory.  A master is only set when nobody else chose one: under
``spark-submit`` (or ``pyspark --master``) the submitted master wins, so the
same job runs in local mode, on ``local-cluster`` and on a real cluster.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark import SparkContext
from pyspark.sql import SparkSession

from recsys_spark import lineage
from recsys_spark.config import SparkConfig
from recsys_spark.io import fs

log = logging.getLogger(__name__)


class ClassicSessionRequired(ValueError):
    """A stage or model that needs what only a classic session has (RDDs, broadcasts, MLlib, the driver JVM)."""


def spark_context(spark: SparkSession, what: str) -> SparkContext:
    """``spark.sparkContext``, or one clear error naming ``what`` needs it on a Spark Connect session."""
    if fs.is_connect(spark):
        raise ClassicSessionRequired(
            f"{what} needs a classic Spark session (it uses the SparkContext: RDDs, broadcasts or MLlib), "
            "and this is a Spark Connect session; run it without [spark] remote / $SPARK_REMOTE (docs/connect.md)"
        )
    return spark.sparkContext


def launched_by_spark_submit() -> bool:
    """True when this Python process was started by spark-submit / a Spark launcher."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def remote_url(conf: SparkConfig) -> str:
    """The Spark Connect server to use ("" for a classic session): ``[spark] remote``, else ``$SPARK_REMOTE``."""
    return conf.remote or os.environ.get("SPARK_REMOTE", "")


def get_spark(conf: SparkConfig, checkpoint_dir: str, app_name: str | None = None) -> SparkSession:
    """Return the active session, creating it from ``conf`` when there is none."""
    url = remote_url(conf)
    if url:
        return _connect(url, conf, app_name)
    active = SparkSession.getActiveSession()
    if active is not None:
        _configure(active, conf, checkpoint_dir)
        return active

    builder = SparkSession.builder.appName(app_name or conf.app_name)
    if not launched_by_spark_submit():
        builder = builder.master(conf.master).config("spark.driver.memory", conf.driver_memory)
        # executors of local-cluster/standalone start their own Python
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(conf.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in conf.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    _configure(spark, conf, checkpoint_dir)
    log.info(
        "spark session %s master=%s version=%s",
        spark.sparkContext.appName,
        spark.sparkContext.master,
        spark.version,
    )
    return spark


def _configure(spark: SparkSession, conf: SparkConfig, checkpoint_dir: str) -> None:
    spark.sparkContext.setLogLevel(conf.log_level)
    spark.conf.set("spark.sql.shuffle.partitions", str(conf.shuffle_partitions))
    spark.sparkContext.setCheckpointDir(checkpoint_dir)
    spark.conf.set(lineage.KEY, conf.checkpoint)


def _connect(url: str, conf: SparkConfig, app_name: str | None) -> SparkSession:
    """A Spark Connect session at ``url`` with this config's runtime settings.

    The server owns its master, memory and other static settings; the ones of ``conf``
    that it refuses are named in one warning.  Its checkpoint folder is the server's
    (``spark.checkpoint.dir`` when it starts) and its log level too.
    """
    if not url.startswith("sc://"):
        raise ValueError(f"[spark] remote must be a Spark Connect URL sc://HOST:PORT, got {url!r}")
    spark = SparkSession.builder.remote(url).appName(app_name or conf.app_name).getOrCreate()
    settings = {
        "spark.sql.shuffle.partitions": str(conf.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        lineage.KEY: conf.checkpoint,
        **conf.conf,
    }
    refused = []
    for key, value in settings.items():
        try:
            spark.conf.set(key, value)
        except Exception:  # noqa: BLE001 -- a static or server-side setting: the server keeps its own
            refused.append(key)
    if refused:
        log.warning("Spark Connect server %s keeps its own %s (static settings: give them when it starts)", url, ", ".join(refused))
    log.info("spark connect session at %s, server version %s", url, spark.version)
    return spark
