"""Hybrid item vectors: collaborative dimensions appended to the content vectors."""

from __future__ import annotations

import logging
import math
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasBaseline, BiasTableModel
from recsys_spark.content.features import FEATURE, VALUE, from_long, to_long
from recsys_spark.recommender import (
    Scale,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_RATING,
    COL_USER,
)

log = logging.getLogger(__name__)



def collaborative_vectors(
    ratings: DataFrame,
    source: Literal["corating", "als"] = "corating",
    rank: int = 20,
    seed: int = 42,
    base: BiasTableModel | None = None,
) -> DataFrame:
    """Unit collaborative item vectors ``(item_idx, indices, values)``, indices from 0.

    ``corating``: the item's baseline residuals ``r - (mu + b_u + b_i)`` over
    the users who rated it (so the cosine of two items is their
    baseline-centred co-rating similarity); ``als``: MLlib ALS item factors.
    """
    if source == "als":
        from pyspark.ml.recommendation import ALS as MLALS

        m = MLALS(
            rank=rank,
            maxIter=10,
            regParam=0.1,
            userCol=COL_USER,
            itemCol=COL_ITEM,
            ratingCol=COL_RATING,
            seed=seed,
        ).fit(ratings)
        long = m.itemFactors.select(
            F.col("id").alias(COL_ITEM), F.posexplode("features").alias(FEATURE, VALUE)
        )
        return from_long(
            long.select(COL_ITEM, F.col(FEATURE).cast("int"), F.col(VALUE).cast("double")),
            COL_ITEM,
            normalize=True,
        )
    if source != "corating":
        raise ValueError(f"collaborative source must be corating or als, got {source!r}")
    base = base or BiasBaseline(scale=Scale(-1e9, 1e9)).fit(ratings)
    res = base.with_prediction(ratings.select(COL_USER, COL_ITEM, COL_RATING), "_b", "_s")
    long = res.select(
        COL_ITEM, F.col(COL_USER).alias(FEATURE), (F.col(COL_RATING) - F.col("_b")).alias(VALUE)
    ).where(F.col(VALUE) != 0)
    return from_long(long, COL_ITEM, normalize=True)


def concat_vectors(
    a: DataFrame, b: DataFrame, offset: int, wa: float = 1.0, wb: float = 1.0
) -> DataFrame:
    """Unit vectors of ``[sqrt(wa) a, sqrt(wb) b]`` (``b``'s indices shifted by ``offset``); items in either."""
    la = to_long(a).withColumn(VALUE, F.col(VALUE) * math.sqrt(wa))
    lb = to_long(b).select(
        COL_ITEM,
        (F.col(FEATURE) + offset).alias(FEATURE),
        (F.col(VALUE) * math.sqrt(wb)).alias(VALUE),
    )
    return from_long(la.unionByName(lb), COL_ITEM, normalize=True)


