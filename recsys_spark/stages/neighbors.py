"""neighbors: the kNN neighbour table (item-item or user-user) of ``neighbors.model``, as Parquet."""

from __future__ import annotations

import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark.config import Config
from recsys_spark.neighbors import KNN
from recsys_spark.recommender import Scale
from recsys_spark.schemas import COL_ITEM, COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage, write
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)


def run_neighbors(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the neighbour table ``(a, b, sim, support)`` of ``neighbors.model`` over train + valid.

    Accounting: ``ratings`` in, ``ratings_paired`` (after the per-key cap) used
    for pair generation, ``entities`` with at least one rating and
    ``entities_with_neighbors``; ``pairs`` rows written.
    """
    name = cfg.neighbors.model
    layout.check_model(name, "neighbors.model")
    split_out = layout.split(cfg)
    output = layout.neighbors(cfg, name)
    models_dir = layout.models_dir_of(cfg)
    params = {**registry.model_params(name, models_dir), "max_neighbors": cfg.neighbors.max_neighbors or None}
    if not isinstance(registry.build(name, Scale(), {}, models_dir), KNN):
        raise ValueError(f"neighbors.model: {name!r} is not a neighbourhood model")

    def body(tmp: str) -> dict[str, Any]:
        est = registry.build(name, layout.rating_scale(spark, cfg), params, models_dir)
        assert isinstance(est, KNN)
        ratings = layout.read_train_valid(spark, cfg)
        ratings = ratings.select(COL_USER, COL_ITEM, "rating").persist(StorageLevel.MEMORY_AND_DISK)
        key, entity = (COL_ITEM, COL_USER) if est.user_based else (COL_USER, COL_ITEM)
        _, table = est.neighbor_table(ratings)
        write(table, f"{tmp}/table")
        written = spark.read.parquet(f"{tmp}/table")
        per_key = ratings.groupBy(key).count()
        paired = per_key.agg(F.sum(F.least(F.col("count"), F.lit(est.cap)) if est.cap else F.col("count"))).first()[0]
        counts = {
            "ratings": ratings.count(), "ratings_paired": int(paired or 0),
            "entities": ratings.select(entity).distinct().count(),
            "entities_with_neighbors": written.select("a").distinct().count(), "pairs": written.count(),
            "direction": "user-user" if est.user_based else "item-item",
        }  # fmt: skip
        log.info(
            "neighbors %s: %d pairs for %d of %d entities", name, counts["pairs"], counts["entities_with_neighbors"], counts["entities"]
        )
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params}
    return run_stage(spark, cfg, "neighbors", output, STAGE.sections, [split_out], body, force, extra)


STAGE = Stage(
    name="neighbors", run=run_neighbors,
    help="write the kNN neighbour table (a, b, sim, support) of neighbors.model to Parquet",
    sections=("neighbors",), inputs=lambda cfg, _m=None: [layout.split(cfg)],
    outputs=lambda cfg, _m=None: [layout.neighbors(cfg, cfg.neighbors.model)],
    instances=lambda cfg: [None] if cfg.neighbors.model in cfg.models.names else [],
)  # fmt: skip
