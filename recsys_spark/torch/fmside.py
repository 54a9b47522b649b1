"""The side tables of FM / DeepFM (:mod:`recsys_spark.torch.fm`), built in Spark and handed over as arrays.

:func:`side_arrays` turns the training ratings and the dataset's side data
(:class:`~recsys_spark.content.SideData`) into a field layout and the
network's buffers.  What is collected is catalogue-sized (one row per user
and per item, a few integers each: the size of an embedding table), never the
ratings.  Every field present has a reason in the data: demographics only
where a users table exists, tags only where a tags table exists, context
fields only where the ratings carry timestamps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.features import user_features
from recsys_spark.schemas import COL_GENRES, COL_ITEM, COL_TAG, COL_TIMESTAMP, COL_USER, COL_YEAR
from recsys_spark.torch.fm import CONTEXT_FIELDS, CONTEXT_SIZES, context_codes, offsets

log = logging.getLogger(__name__)

AGE_BUCKETS = 10  # age // 10, capped at 9 (90+)


def top_tags(tags: DataFrame, vocab: int, per_item: int) -> tuple[DataFrame, list[str]]:
    """Each item's ``per_item`` most used tags among the ``vocab`` tags on most items (lower-cased, trimmed).

    Returns ``(item_idx, tag_ids)`` (ids index the returned vocabulary; ties by tag) and the vocabulary.
    """
    norm = tags.select(COL_ITEM, F.lower(F.trim(F.col(COL_TAG))).alias("_t")).where(F.col("_t") != "")
    spread = norm.groupBy("_t").agg(F.countDistinct(COL_ITEM).alias("_n"))
    words = [r["_t"] for r in spread.orderBy(F.desc("_n"), F.asc("_t")).limit(vocab).collect()]  # bounded: vocab rows
    if not words:
        return norm.select(COL_ITEM, F.array().cast("array<int>").alias("tag_ids")).limit(0), []
    ids = F.create_map(*[x for j, w in enumerate(words) for x in (F.lit(w), F.lit(j))])
    counted = norm.where(F.col("_t").isin(words)).groupBy(COL_ITEM, "_t").agg(F.count("*").alias("_c"))
    w = Window.partitionBy(COL_ITEM).orderBy(F.desc("_c"), F.asc("_t"))
    top = counted.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= per_item)
    out = top.groupBy(COL_ITEM).agg(F.sort_array(F.collect_list(F.struct("_r", ids[F.col("_t")].alias("_id")))).alias("_s"))
    return out.select(COL_ITEM, F.col("_s._id").alias("tag_ids")), words


def _field(name: str, size: int, side: str, width: int = 0) -> dict[str, Any]:
    """A field of the layout; ``width`` > 0: multi-valued (up to ``width`` values per item)."""
    return {"name": name, "size": int(size), "side": side, "multi": width > 0, "width": max(1, int(width))}


def side_arrays(
    train: DataFrame, side: Any, n_users: int, n_items: int, tag_vocab: int = 256, tags_per_item: int = 5,
    use_context: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """``(layout, arrays)`` for :class:`~recsys_spark.torch.fm.DeepFM` over users ``< n_users`` and items ``< n_items``.

    ``side``: a SideData (``items``, optional ``tags`` and ``users``) or None
    (then the fields are the ids and, with timestamps, the context).
    """
    fields = [_field("user", n_users, "user")]
    users_pd = None
    occupations: list[str] = []
    if side is not None and side.users is not None:
        uf, occupations = user_features(side.users, train)
        users_pd = uf.where(F.col(COL_USER) < n_users).toPandas()  # one row per user
        fields += [_field("gender", 3, "user"), _field("age", AGE_BUCKETS, "user"), _field("occupation", max(1, len(occupations)), "user")]
    fields.append(_field("item", n_items, "item"))
    items_pd = None
    genres: list[str] = []
    if side is not None and side.items is not None:
        cols = [COL_ITEM, COL_GENRES] + ([COL_YEAR] if COL_YEAR in side.items.columns else [])
        items_pd = side.items.select(*cols).where(F.col(COL_ITEM) < n_items).toPandas()  # one row per item
        genres = sorted({g for gs in items_pd[COL_GENRES] for g in (gs if gs is not None else []) if g})
        years = items_pd[COL_YEAR].dropna() if COL_YEAR in items_pd else []
        first_decade = int(years.min()) // 10 if len(years) else 0
        n_decades = (int(years.max()) // 10 - first_decade + 1) if len(years) else 0
        if n_decades:
            fields.append(_field("decade", n_decades, "item"))
    timed = use_context and COL_TIMESTAMP in train.columns
    span = None
    if timed:
        span = (
            train.where(F.col(COL_TIMESTAMP) >= 0)
            .groupBy(COL_USER)
            .agg(F.min(COL_TIMESTAMP).alias("first"), F.max(COL_TIMESTAMP).alias("last"))
            .toPandas()
        )  # one row per user
        timed = len(span) > 0
    if timed:
        fields += [_field(n, CONTEXT_SIZES[n], "context") for n in CONTEXT_FIELDS]
    max_genres = 0
    if items_pd is not None and genres:
        max_genres = max(1, max(len(gs) for gs in items_pd[COL_GENRES] if gs is not None))
        fields.append(_field("genres", len(genres), "item", max_genres))
    tag_pd, words = None, []
    if side is not None and side.tags is not None and tag_vocab > 0 and tags_per_item > 0:
        tagged, words = top_tags(side.tags, tag_vocab, tags_per_item)
        if words:
            tag_pd = tagged.where(F.col(COL_ITEM) < n_items).toPandas()  # one row per tagged item
            fields.append(_field("tags", len(words), "item", tags_per_item))
    layout = {"fields": fields, "genres": genres, "occupations": occupations, "tags": words}
    off = offsets(layout)
    names = [f["name"] for f in fields]

    user_cols = [n for n in ("user", "gender", "age", "occupation") if n in names]
    user_cat = np.zeros((n_users, len(user_cols)), dtype=np.int64)
    user_cat[:, 0] = off["user"] + 1 + np.arange(n_users)
    if users_pd is not None:
        u = users_pd[COL_USER].to_numpy()
        for j, (col, name, cap) in enumerate(
            [("gender", "gender", 3), ("age_bucket", "age", AGE_BUCKETS), ("occupation", "occupation", max(1, len(occupations)))], start=1
        ):
            code = users_pd[col].to_numpy().astype(np.int64)
            code = np.where(code >= 0, np.minimum(code, cap - 1) + 1, 0)
            user_cat[:, j] = off[name]  # unknown
            user_cat[u, j] = off[name] + code

    item_cols = [n for n in ("item", "decade") if n in names]
    item_cat = np.zeros((n_items, len(item_cols)), dtype=np.int64)
    item_cat[:, 0] = off["item"] + 1 + np.arange(n_items)
    arrays: dict[str, np.ndarray] = {}
    if "decade" in names:
        item_cat[:, 1] = off["decade"]
        yr = items_pd[COL_YEAR]
        have = yr.notna().to_numpy()
        ii = items_pd[COL_ITEM].to_numpy()[have]
        item_cat[ii, 1] = off["decade"] + 1 + (yr[have].astype(int).to_numpy() // 10 - first_decade)
    if "genres" in names:
        g = np.zeros((n_items, max_genres), dtype=np.int64)
        gid = {x: j for j, x in enumerate(genres)}
        for i, gs in zip(items_pd[COL_ITEM].to_numpy(), items_pd[COL_GENRES], strict=True):
            codes = sorted(gid[x] for x in (gs if gs is not None else []) if x in gid)
            g[i, : len(codes)] = off["genres"] + 1 + np.asarray(codes, dtype=np.int64)
        arrays["item_multi_genres"] = g
    if "tags" in names:
        t = np.zeros((n_items, tags_per_item), dtype=np.int64)
        for i, ids in zip(tag_pd[COL_ITEM].to_numpy(), tag_pd["tag_ids"], strict=True):
            ids = np.asarray(ids, dtype=np.int64)[:tags_per_item]
            t[i, : len(ids)] = off["tags"] + 1 + ids
        arrays["item_multi_tags"] = t

    first_day = np.zeros(n_users, dtype=np.float32)
    last_context = np.zeros((n_users, len(CONTEXT_FIELDS) if timed else 0), dtype=np.int64)
    if timed:
        u = span[COL_USER].to_numpy()
        first_day[u] = (span["first"].to_numpy() / 86400.0).astype(np.float32)
        base = np.array([off[n] for n in CONTEXT_FIELDS], dtype=np.int64)
        last_context[:] = base  # users without a timestamped rating: unknown context
        codes = np.stack(context_codes(span["last"].to_numpy().astype(np.int64), first_day[u].astype(np.float64)), axis=1)
        last_context[u] = base + codes
    arrays.update(user_cat=user_cat, item_cat=item_cat, first_day=first_day, last_context=last_context)
    log.info("deepfm side tables: fields %s (%d rows in the shared table)", ", ".join(names), off["_total"])
    return layout, arrays


__all__ = ["side_arrays", "top_tags"]
