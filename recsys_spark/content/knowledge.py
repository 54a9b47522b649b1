"""Knowledge-based recommendations for users with no ratings: the genres they pick."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import (
    COL_GENRES,
    COL_ITEM,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_TITLE,
)

log = logging.getLogger(__name__)

def knowledge_based(
    ratings: DataFrame,
    items: DataFrame,
    genres: list[str],
    k: int = 10,
    min_count: int = 20,
    damping: float = 10.0,
    name: str = "knowledge",
) -> DataFrame:
    """Top-``k`` for a brand-new user who picked ``genres``: ``(rank, item_idx, score, title, genres, n)``.

    Items having any picked genre, with at least ``min_count`` ratings, by the
    damped mean ``(sum r + damping * mu) / (n + damping)`` (popular *and* well
    rated); fewer than ``k`` rows only when fewer items qualify.
    """
    picked = [g.strip().lower() for g in genres if g.strip()]
    if not picked:
        raise ValueError("knowledge_based: pick at least one genre")
    known = {
        g.lower()
        for row in items.select(F.explode(COL_GENRES).alias("g")).distinct().collect()
        for g in [row["g"]]
    }
    missing = [g for g in picked if g not in known]
    if missing:
        raise ValueError(
            f"knowledge_based: unknown genre(s) {missing}; the catalogue has {sorted(known)}"
        )
    mu = ratings.agg(F.avg(COL_RATING)).first()[0]
    stats = (
        ratings.groupBy(COL_ITEM)
        .agg(F.count("*").alias("n"), F.sum(COL_RATING).alias("_s"))
        .where(F.col("n") >= min_count)
    )
    match = items.where(
        F.arrays_overlap(
            F.transform(COL_GENRES, lambda g: F.lower(g)), F.array(*[F.lit(g) for g in picked])
        )
    )
    scored = match.join(stats, COL_ITEM).select(
        COL_ITEM,
        COL_TITLE,
        COL_GENRES,
        "n",
        ((F.col("_s") + damping * mu) / (F.col("n") + damping)).alias(COL_SCORE),
    )
    # the first k by a sort and a limit, then ranked within those k rows (one small partition)
    top = scored.orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM)).limit(k)
    w = Window.partitionBy(F.lit(0)).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return (
        top.withColumn(COL_RANK, F.row_number().over(w))
        .select(COL_RANK, COL_ITEM, COL_SCORE, COL_TITLE, COL_GENRES, "n")
        .orderBy(COL_RANK)
    )


