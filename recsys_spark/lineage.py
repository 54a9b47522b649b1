"""Cutting a long lineage: local checkpoints by default, reliable ones where an executor can be lost.

Iterative fits (our SGD engine's epochs, ALS backfitting, the content model's tables) cut
their lineage so that plans stay short.  ``[spark] checkpoint`` chooses how (Spark setting
``spark.recsys.checkpoint``):

- ``"local"`` (default): ``localCheckpoint()``, blocks in the executors' storage.  Fast,
  but the lineage before the cut is gone: an executor lost after the cut takes its blocks
  with it and the job fails ("Checkpoint block ... not found").  Right for local mode and
  for clusters whose executors are not expected to go away.
- ``"reliable"``: ``checkpoint()`` into the session's checkpoint folder (``[spark]
  checkpoint_dir``, a shared file system on a cluster): a write and a read more per cut,
  and a lost executor's part is read back from the folder.
"""

from __future__ import annotations

from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame, SparkSession

KEY = "spark.recsys.checkpoint"
MODES = ("local", "reliable")


def mode(spark: SparkSession) -> str:
    value = spark.conf.get(KEY, "local") or "local"
    if value not in MODES:
        raise ValueError(f"{KEY} (config [spark] checkpoint) must be one of {MODES}, got {value!r}")
    return value


def cut(df: DataFrame, storage_level: StorageLevel | None = None) -> DataFrame:
    """``df`` materialized with its lineage cut (``df.transform(cut)`` in a chain).

    ``storage_level`` (local mode only; the reliable mode writes files anyway): where the
    executors keep the blocks, ``StorageLevel.DISK_ONLY`` for rows too large to sit in the heap.
    """
    if mode(df.sparkSession) == "reliable":
        return df.checkpoint(eager=True)
    return df.localCheckpoint(eager=True, storageLevel=storage_level) if storage_level else df.localCheckpoint()


def cut_rdd(rdd: RDD, spark: SparkSession) -> None:
    """Mark ``rdd`` (persisted by the caller) to have its lineage cut when it is next computed."""
    if mode(spark) == "reliable":
        rdd.checkpoint()
    else:
        rdd.localCheckpoint()
