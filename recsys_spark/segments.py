"""Error analysis by segment: where each model is strong or weak.

Users are segmented by activity (training ratings, deciles), by the variance
of their ratings (deciles) and by demographics where the dataset has them
(gender, age band); items by popularity (training ratings, deciles) and by
genre (an item with several genres counts in each). Per segment and model:
RMSE over the test ratings in it, and for user segments the mean per-user
NDCG@k as well.

Decile edges are exact quantiles of a one-row-per-user (or per-item) table;
ties can leave a decile empty or merge two, so each segment is labelled with
the range of values it holds (``"21-35"``), not only its index.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_AGE, COL_GENDER, COL_GENRES, COL_ITEM, COL_RATING, COL_USER

KIND, SEGMENT, ORDER = "kind", "segment", "segment_order"


def _deciles(df: DataFrame, key: str, value: str, kind: str, fmt: str) -> DataFrame:
    """``(key, kind, segment, segment_order)``: the decile of ``value`` with its value range as the label."""
    edges = sorted(set(df.approxQuantile(value, [i / 10 for i in range(1, 10)], 0.0)))  # exact on this small table
    bucket: Column = F.lit(0)
    for e in edges:
        bucket = bucket + F.when(F.col(value) > F.lit(e), 1).otherwise(0)
    b = df.select(key, value, bucket.alias(ORDER))
    ranges = b.groupBy(ORDER).agg(F.min(value).alias("_lo"), F.max(value).alias("_hi"))
    label = F.concat(F.format_string(fmt, F.col("_lo")), F.lit("-"), F.format_string(fmt, F.col("_hi")))
    return b.join(ranges, ORDER).select(key, F.lit(kind).alias(KIND), label.alias(SEGMENT), ORDER)


def user_segments(train: DataFrame, users: DataFrame | None = None) -> DataFrame:
    """``(user_idx, kind, segment, segment_order)``, one row per user and kind."""
    stats = train.groupBy(COL_USER).agg(F.count("*").alias("n"), F.coalesce(F.var_pop(COL_RATING), F.lit(0.0)).alias("var"))
    stats = stats.persist()
    parts = [_deciles(stats, COL_USER, "n", "user activity", "%d"), _deciles(stats, COL_USER, "var", "user rating variance", "%.2f")]
    if users is not None:
        if COL_GENDER in users.columns:
            g = users.where(F.col(COL_GENDER).isNotNull())
            parts.append(g.select(COL_USER, F.lit("user gender").alias(KIND), F.col(COL_GENDER).alias(SEGMENT), F.lit(0).alias(ORDER)))
        if COL_AGE in users.columns:
            a = users.where(F.col(COL_AGE).isNotNull())
            band = (F.floor(F.col(COL_AGE) / 10) * 10).cast("int")
            parts.append(
                a.select(
                    COL_USER, F.lit("user age").alias(KIND), F.concat(band.cast("string"), F.lit("s")).alias(SEGMENT), band.alias(ORDER)
                )
            )
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def item_segments(train: DataFrame, items: DataFrame | None = None) -> DataFrame:
    """``(item_idx, kind, segment, segment_order)``: popularity deciles, and genres where items have them."""
    pop = train.groupBy(COL_ITEM).agg(F.count("*").alias("n")).persist()
    out = _deciles(pop, COL_ITEM, "n", "item popularity", "%d")
    if items is not None and COL_GENRES in items.columns:
        g = items.select(COL_ITEM, F.explode(COL_GENRES).alias(SEGMENT))
        out = out.unionByName(g.select(COL_ITEM, F.lit("item genre").alias(KIND), SEGMENT, F.lit(0).alias(ORDER)))
    return out


def segment_table(errors: DataFrame, per_user: DataFrame, users_seg: DataFrame, items_seg: DataFrame, ndcg_col: str) -> DataFrame:
    """Per (kind, segment, model): test ``rows``, ``rmse``; for user segments also ``users`` and mean ``ndcg_col``.

    ``errors``: ``(user_idx, item_idx, model, err)`` for every test rating;
    ``per_user``: ``(user_idx, model, <ndcg_col>)``.
    """
    keys = [KIND, SEGMENT, ORDER, "model"]
    # segment memberships are one row per user (item) and kind: small, cached once and broadcast
    users_seg, items_seg = F.broadcast(users_seg.persist()), F.broadcast(items_seg.persist())
    by_user = errors.join(users_seg, COL_USER)
    by_item = errors.join(items_seg, COL_ITEM)
    rmse = by_user.unionByName(by_item.select(*by_user.columns)).groupBy(*keys).agg(
        F.count("*").alias("rows"), F.sqrt(F.avg(F.col("err") * F.col("err"))).alias("rmse")
    )
    ndcg = (
        per_user.join(users_seg, COL_USER)
        .groupBy(*keys)
        .agg(F.count("*").alias("users"), F.avg(ndcg_col).alias(ndcg_col))
    )
    return rmse.join(ndcg, keys, "full_outer")  # a few hundred rows: the caller orders them


def markdown(table_rows: list, models: list[str], kind: str, metric: str) -> str:
    """One segment kind as a Markdown table: a row per segment, a column per model."""
    rows = [r for r in table_rows if r[KIND] == kind and r[metric] is not None]
    if not rows:
        return ""
    segs: dict[tuple, dict[str, float]] = {}
    size: dict[tuple, int] = {}
    count_col = "users" if metric != "rmse" else "rows"
    for r in rows:
        key = (r[ORDER], r[SEGMENT])
        segs.setdefault(key, {})[r["model"]] = r[metric]
        size[key] = max(size.get(key, 0), r[count_col] or 0)
    lines = [f"| {kind} | {count_col} | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for key in sorted(segs):
        cells = [f"{segs[key][m]:.4f}" if m in segs[key] else "" for m in models]
        lines.append(f"| {key[1]} | {size[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
