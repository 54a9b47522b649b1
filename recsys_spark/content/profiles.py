"""User profiles as updatable sums over the features of the items a user rated."""

from __future__ import annotations

import logging
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.content.features import FEATURE, IDX, VAL, VALUE, from_long
from recsys_spark.schemas import (
    COL_ITEM,
    COL_RATING,
    COL_USER,
)

log = logging.getLogger(__name__)


Weighting = Literal["centred", "rating", "binary"]


def profile_sums(ratings: DataFrame, item_long: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(sums, counts)``: ``(user_idx, feature, s_rx, s_x)`` and ``(user_idx, n, s_r)`` of ``ratings``."""
    r = ratings.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double").alias(COL_RATING))
    sums = (
        r.join(item_long, COL_ITEM)
        .groupBy(COL_USER, FEATURE)
        .agg(F.sum(F.col(COL_RATING) * F.col(VALUE)).alias("s_rx"), F.sum(VALUE).alias("s_x"))
    )
    counts = r.groupBy(COL_USER).agg(F.count("*").alias("n"), F.sum(COL_RATING).alias("s_r"))
    return sums, counts


def update_profile_sums(
    sums: DataFrame, counts: DataFrame, new_ratings: DataFrame, item_long: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """The sums after adding ``new_ratings`` (new events for any user, known or not): touches only their rows' totals."""
    ds, dc = profile_sums(new_ratings, item_long)
    s = (
        sums.unionByName(ds)
        .groupBy(COL_USER, FEATURE)
        .agg(F.sum("s_rx").alias("s_rx"), F.sum("s_x").alias("s_x"))
    )
    c = (
        counts.unionByName(dc.select(COL_USER, F.col("n").cast("long"), "s_r"))
        .groupBy(COL_USER)
        .agg(F.sum("n").alias("n"), F.sum("s_r").alias("s_r"))
    )
    return s, c


def profile_vectors(sums: DataFrame, counts: DataFrame, weighting: Weighting = "centred", normalize: bool = True) -> DataFrame:
    """``(user_idx, indices, values)``: ``sum (r - mean_u) x`` (centred), ``sum r x`` (rating) or ``sum x`` (binary).

    A centred profile is all zeros when every rating of the user equals their
    mean (e.g. three 5-star ratings): such a user gets the binary profile
    (what they rated) instead of none.
    """
    if weighting == "centred":
        v = F.col("s_rx") - F.col("s_r") / F.col("n") * F.col("s_x")
    elif weighting == "rating":
        v = F.col("s_rx")
    elif weighting == "binary":
        v = F.col("s_x")
    else:
        raise ValueError(f"profile weighting must be centred, rating or binary, got {weighting!r}")
    eps = 1e-9
    long = sums.join(counts, COL_USER).select(COL_USER, FEATURE, v.alias(VALUE), F.col("s_x"))
    if weighting == "centred":
        flat = (
            long.groupBy(COL_USER)
            .agg(F.max(F.abs(VALUE)).alias("_m"))
            .where(F.col("_m") <= eps)
            .select(COL_USER, F.lit(True).alias("_flat"))
        )
        long = long.join(flat, COL_USER, "left").select(
            COL_USER, FEATURE, F.when(F.col("_flat").isNotNull(), F.col("s_x")).otherwise(F.col(VALUE)).alias(VALUE)
        )
    long = long.select(COL_USER, FEATURE, VALUE).where(F.abs(F.col(VALUE)) > eps)
    users = counts.select(COL_USER)
    vec = from_long(long, COL_USER, normalize=normalize)
    return users.join(vec, COL_USER, "left").select(
        COL_USER, F.coalesce(IDX, F.array().cast("array<int>")).alias(IDX), F.coalesce(VAL, F.array().cast("array<double>")).alias(VAL)
    )
