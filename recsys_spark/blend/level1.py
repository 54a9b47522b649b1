"""The level-1 table: every member's prediction and source per pair, context features, missing rows."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RATING, COL_SOURCE, COL_TIMESTAMP, COL_USER

log = logging.getLogger(__name__)

CONTEXT = ("log_n_user", "log_n_item", "user_var", "user_days", "item_days")
FALLBACK_ORDER = ("bias", "global_mean", "item_mean", "user_mean")  # who answers a member's missing rows
DAY = 86_400


class BlendError(ValueError):
    """A blend that cannot be built from what it was given (names the model and the part)."""


def _p(name: str) -> str:
    return f"p_{name}"


def _s(name: str) -> str:
    return f"s_{name}"


def context_tables(train: DataFrame) -> tuple[DataFrame, DataFrame, int]:
    """Per-user and per-item context from the ratings the members were fitted on, and the last timestamp."""
    has_ts = COL_TIMESTAMP in train.columns
    ts = F.col(COL_TIMESTAMP) if has_ts else F.lit(None).cast("long")
    users = train.groupBy(COL_USER).agg(
        F.log1p(F.count("*")).alias("log_n_user"),
        F.coalesce(F.var_pop(COL_RATING), F.lit(0.0)).alias("user_var"),
        F.min(ts).alias("_u_first"),
    )
    items = train.groupBy(COL_ITEM).agg(F.log1p(F.count("*")).alias("log_n_item"), F.min(ts).alias("_i_first"))
    last = train.agg(F.max(ts)).first()[0] if has_ts else None  # a scalar
    return users, items, int(last or 0)


def level1(
    members: Mapping[str, DataFrame], pairs: DataFrame, train: DataFrame,
) -> DataFrame:  # fmt: skip
    """One row per pair of ``pairs``: each member's prediction and source, and the context features.

    ``members`` maps a model name to its rating predictions of exactly these
    pairs (``user_idx, item_idx, prediction, source``); a pair a member did not
    predict is an error naming the member (the predict stage accounts for every row).
    """
    users, items, last = context_tables(train)
    keys = [COL_USER, COL_ITEM]
    extra = [c for c in (COL_RATING, COL_TIMESTAMP) if c in pairs.columns]
    out = pairs.select(*keys, *extra)
    for name, df in members.items():
        src = F.col(COL_SOURCE) if COL_SOURCE in df.columns else F.lit(name)
        out = out.join(df.select(*keys, F.col(COL_PREDICTION).alias(_p(name)), src.alias(_s(name))), keys, "left")
    at = F.col(COL_TIMESTAMP) if COL_TIMESTAMP in pairs.columns else F.lit(last)
    out = (
        out.join(users, COL_USER, "left")
        .join(items, COL_ITEM, "left")
        .withColumn("user_days", F.greatest(F.lit(0.0), (at - F.col("_u_first")) / DAY))
        .withColumn("item_days", F.greatest(F.lit(0.0), (at - F.col("_i_first")) / DAY))
        .drop("_u_first", "_i_first")
        .fillna(0.0, list(CONTEXT))
    )
    return out


def missing_counts(table: DataFrame, names: Sequence[str]) -> dict[str, int]:
    """Rows per member with no prediction."""
    row = table.agg(*[F.sum(F.col(_p(n)).isNull().cast("int")).alias(n) for n in names]).first()  # scalars
    return {n: int(row[n] or 0) for n in names}


def fill_missing(table: DataFrame, names: Sequence[str], part: str, fallback_value: float) -> tuple[DataFrame, dict[str, Any]]:
    """Rows a member did not predict, answered by a complete member (``source`` ``missing-><fallback>``); counted.

    The fallback is the first complete member of :data:`FALLBACK_ORDER`, else
    the first complete member, else ``fallback_value`` (the training mean).
    """
    missing = missing_counts(table, names)
    bad = {n: m for n, m in missing.items() if m}
    report: dict[str, Any] = {"missing": bad, "filled_by": None}
    if not bad:
        return table, report
    complete = [n for n in names if not missing[n]]
    fb = next((n for n in FALLBACK_ORDER if n in complete), complete[0] if complete else None)
    value = F.col(_p(fb)) if fb else F.lit(float(fallback_value))
    label = fb or "the training mean"
    for n in bad:
        table = table.withColumn(_s(n), F.when(F.col(_p(n)).isNull(), F.lit(f"missing->{label}")).otherwise(F.col(_s(n))))
        table = table.withColumn(_p(n), F.coalesce(F.col(_p(n)), value))
    report["filled_by"] = label
    log.warning("%s part: members without a prediction for some pairs: %s; %s answers those rows", part, bad, label)
    return table, report


def sample_users(table: DataFrame, max_rows: int, seed: int = 42) -> DataFrame:
    """Whole users, chosen by a seeded hash, so that about ``max_rows`` rows remain."""
    n = table.count()
    if n <= max_rows:
        return table
    share = max_rows / n
    h = (F.xxhash64(F.lit(seed), F.col(COL_USER)).bitwiseAND(F.lit((1 << 30) - 1)) / float(1 << 30))
    return table.where(h < share)
