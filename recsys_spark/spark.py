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

from pyspark.sql import SparkSession

from recsys_spark import lineage
from recsys_spark.config import SparkConfig

log = logging.getLogger(__name__)


def launched_by_spark_submit() -> bool:
    """True when this Python process was started by spark-submit / a Spark launcher."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def get_spark(conf: SparkConfig, checkpoint_dir: str, app_name: str | None = None) -> SparkSession:
    """Return the active session, creating it from ``conf`` when there is none."""
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
