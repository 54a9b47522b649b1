"""Splitters: every row gets exactly one part in a single projection.

Each splitter returns the input with a ``part`` column (``train``, ``valid`` or
``test``); :func:`parts` turns that into one DataFrame per part.  Because the
part is computed once per row, in one expression, no row can land in two parts.
Randomness is a seeded hash of ``(seed, user, item)`` (not ``rand()``), so the
assignment does not depend on partitioning or on lazy re-evaluation.

Definitions (``n`` = a user's number of ratings):

* ``random``: a row is test with probability ``1 - ratio``.
* ``stratified``: per user, a seeded random order; the first
  ``round(n * ratio)`` (at least 1) rows are train, the rest test.  Users with
  a single rating keep it in train.
* ``chronological``: as stratified, ordered by timestamp (ties by item).
* ``leave_last_out``: each user's latest rating is test (and, with a
  validation part, the one before it is valid); users with one rating keep it
  in train.
* ``valid_ratio``: for random/stratified/chronological, that share of each
  user's train rows (the latest ones for chronological, random ones
  otherwise) becomes ``valid``.
"""

from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_TIMESTAMP, COL_USER, require_columns

log = logging.getLogger(__name__)

COL_PART = "part"
TRAIN, VALID, TEST = "train", "valid", "test"
_MASK = (1 << 52) - 1


def hash_uniform(seed: int, *cols: str | Column) -> Column:
    """A uniform number in [0, 1) from a seeded hash of the columns."""
    h = F.xxhash64(F.lit(seed), *[F.col(c) if isinstance(c, str) else c for c in cols])
    return h.bitwiseAND(F.lit(_MASK)).cast("double") / float(1 << 52)


def random_split(
    df: DataFrame, ratio: float, seed: int, valid_ratio: float = 0.0,
    col_user: str = COL_USER, col_item: str = COL_ITEM,
) -> DataFrame:  # fmt: skip
    require_columns(df, [col_user, col_item], "random_split input")
    u = hash_uniform(seed, col_user, col_item)
    part = (
        F.when(u >= ratio, F.lit(TEST))
        .when(u >= ratio * (1 - valid_ratio), F.lit(VALID))
        .otherwise(F.lit(TRAIN))
    )
    return df.withColumn(COL_PART, part)


def _ordered_split(df: DataFrame, order: list[Column], ratio: float, valid_ratio: float, col_user: str) -> DataFrame:
    by_user = Window.partitionBy(col_user)
    n_train = F.greatest(F.lit(1), F.round(F.count(F.lit(1)).over(by_user) * ratio)).cast("int")
    part = (
        F.when(F.col("_rn") > F.col("_n_train"), F.lit(TEST))
        .when(F.col("_rn") > F.col("_n_train") - F.round(F.col("_n_train") * valid_ratio), F.lit(VALID))
        .otherwise(F.lit(TRAIN))
    )
    return (
        df.withColumn("_rn", F.row_number().over(by_user.orderBy(*order)))
        .withColumn("_n_train", n_train)
        .withColumn(COL_PART, part)
        .drop("_rn", "_n_train")
    )


def stratified_split(
    df: DataFrame, ratio: float, seed: int, valid_ratio: float = 0.0,
    col_user: str = COL_USER, col_item: str = COL_ITEM,
) -> DataFrame:  # fmt: skip
    """Per-user random split: ``round(n * ratio)`` (>= 1) train rows per user."""
    require_columns(df, [col_user, col_item], "stratified_split input")
    order = [hash_uniform(seed, col_user, col_item), F.col(col_item)]
    return _ordered_split(df, order, ratio, valid_ratio, col_user)


def chronological_split(
    df: DataFrame, ratio: float, valid_ratio: float = 0.0,
    col_user: str = COL_USER, col_item: str = COL_ITEM, col_timestamp: str = COL_TIMESTAMP,
) -> DataFrame:  # fmt: skip
    """Per-user split by time: each user's earliest ``round(n * ratio)`` rows are train."""
    require_columns(df, [col_user, col_item, col_timestamp], "chronological_split input")
    return _ordered_split(df, [F.col(col_timestamp), F.col(col_item)], ratio, valid_ratio, col_user)


def leave_last_out(
    df: DataFrame, with_valid: bool = False,
    col_user: str = COL_USER, col_item: str = COL_ITEM, col_timestamp: str = COL_TIMESTAMP,
) -> DataFrame:  # fmt: skip
    """Each user's latest rating (ties: larger item index) is test; the one before is valid."""
    require_columns(df, [col_user, col_item, col_timestamp], "leave_last_out input")
    w = Window.partitionBy(col_user).orderBy(F.col(col_timestamp).desc(), F.col(col_item).desc())
    n = F.count(F.lit(1)).over(Window.partitionBy(col_user))
    back = F.row_number().over(w)  # 1 = latest
    part = F.when((back == 1) & (n >= 2), F.lit(TEST))
    if with_valid:
        part = part.when((back == 2) & (n >= 3), F.lit(VALID))
    return df.withColumn(COL_PART, part.otherwise(F.lit(TRAIN)))


def parts(df: DataFrame) -> dict[str, DataFrame]:
    """One DataFrame per part (without the ``part`` column)."""
    cols = [c for c in df.columns if c != COL_PART]
    return {p: df.where(F.col(COL_PART) == p).select(*cols) for p in (TRAIN, VALID, TEST)}


def sample_negatives(
    held_out: DataFrame, rated: DataFrame, n_items: int, n: int, seed: int,
    col_user: str = COL_USER, col_item: str = COL_ITEM, max_rounds: int = 4,
) -> tuple[DataFrame, int]:  # fmt: skip
    """``n`` items per held-out (user, item) row that the user never rated.

    Candidates are seeded hash draws over ``0..n_items-1``; items the user
    rated (anywhere in ``rated``) and repeats are removed, and the first ``n``
    draws are kept.  Rows still short after the first round get more draws (up
    to ``max_rounds``).  Returns ``(negatives, rows_short)``: negatives as
    ``(user_idx, pos_item_idx, item_idx)``, and how many held-out rows got fewer
    than ``n`` (a user who rated nearly every item).
    """
    require_columns(held_out, [col_user, col_item], "sample_negatives held-out input")
    pos = held_out.select(F.col(col_user).alias(COL_USER), F.col(col_item).alias("pos_item_idx"))
    seen = rated.select(F.col(col_user).alias(COL_USER), F.col(col_item).alias(COL_ITEM)).distinct()
    draws = 2 * n + 10
    result = None
    todo = pos
    short = 0
    for round_no in range(max_rounds):
        m = draws * (4**round_no)
        cand = todo.select(
            COL_USER, "pos_item_idx", F.explode(F.sequence(F.lit(0), F.lit(m - 1))).alias("_d")
        ).withColumn(
            COL_ITEM,
            F.floor(hash_uniform(seed + round_no, COL_USER, "pos_item_idx", "_d") * n_items).cast("int"),
        )
        cand = cand.join(seen, [COL_USER, COL_ITEM], "left_anti")
        cand = cand.groupBy(COL_USER, "pos_item_idx", COL_ITEM).agg(F.min("_d").alias("_d"))
        w = Window.partitionBy(COL_USER, "pos_item_idx").orderBy("_d")
        got = cand.withColumn("_k", F.row_number().over(w)).where(F.col("_k") <= n).drop("_d", "_k").persist()
        counts = got.groupBy(COL_USER, "pos_item_idx").agg(F.count("*").alias("_c"))
        complete = counts.where(F.col("_c") == n).select(COL_USER, "pos_item_idx")
        done = got.join(complete, [COL_USER, "pos_item_idx"], "left_semi")
        result = done if result is None else result.unionByName(done)
        todo = todo.join(complete, [COL_USER, "pos_item_idx"], "left_anti").persist()
        short = todo.count()  # rows still short: a scalar
        if short == 0:
            break
        if round_no == max_rounds - 1:
            result = result.unionByName(got.join(todo, [COL_USER, "pos_item_idx"], "left_semi"))
            log.warning("%d held-out rows got fewer than %d negatives (users who rated almost everything)", short, n)
    out = result.select(
        F.col(COL_USER).cast("int"), F.col("pos_item_idx").cast("int"), F.col(COL_ITEM).cast("int")
    )
    return out, short


def split_ratings(df: DataFrame, protocol: str, ratio: float, seed: int, valid_ratio: float) -> DataFrame:
    """Dispatch on the protocol name (all but ``ml100k_folds``, which reads files)."""
    if protocol == "random":
        return random_split(df, ratio, seed, valid_ratio)
    if protocol == "stratified":
        return stratified_split(df, ratio, seed, valid_ratio)
    if protocol == "chronological":
        return chronological_split(df, ratio, valid_ratio)
    if protocol == "leave_last_out":
        return leave_last_out(df, with_valid=valid_ratio > 0)
    raise ValueError(
        f"unknown split protocol {protocol!r}; one of random, stratified, chronological, leave_last_out"
    )


__all__ = [
    "COL_PART", "TRAIN", "VALID", "TEST", "COL_RATING", "random_split", "stratified_split",
    "chronological_split", "leave_last_out", "parts", "sample_negatives", "split_ratings",
]  # fmt: skip
