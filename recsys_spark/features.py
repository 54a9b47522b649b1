"""Feature tables handed from Spark to PyTorch jobs (the ``export_features`` stage).

Pure DataFrame functions; :func:`recsys_spark.stages.run_export` writes them
as Parquet with the declared schemas below and row groups sized for
streaming (the PyTorch loader's unit of work is a row group).

* ``interactions``: :data:`INTERACTIONS_SCHEMA`, one row per rating; every
  rating is a positive (``label`` 1) for implicit models, ``rating`` the
  target of explicit ones.
* ``negatives``: :data:`NEGATIVES_SCHEMA`, ``ratio`` sampled items per
  training positive of each user (fewer when the user has rated almost the
  whole catalogue), never one of the user's training items, deterministic
  for a seed (hash sampling, no ``rand()``: re-evaluation cannot change it).
* ``items``: :data:`ITEM_FEATURES_SCHEMA`: genre multi-hot, decade bucket and,
  when the content stage's item vectors exist, the ids of the item's top
  TF-IDF terms (padded with -1 to a fixed length).
* ``users``: :data:`USER_FEATURES_SCHEMA`: gender, age bucket and occupation
  ids where the dataset has demographics, -1 where it does not.
* ``histories``: :data:`HISTORIES_SCHEMA`: each user's items, ratings and
  timestamps in chronological order (ties by item), for sequence models.

Vocabularies (genres, occupations) are sorted lists, small by construction;
their sizes go to the metadata file.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.schemas import (
    COL_AGE,
    COL_GENDER,
    COL_GENRES,
    COL_ITEM,
    COL_OCCUPATION,
    COL_RATING,
    COL_TIMESTAMP,
    COL_USER,
    COL_YEAR,
    require_columns,
)

COL_LABEL = "label"
INTERACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_RATING, T.FloatType(), False),
        T.StructField(COL_LABEL, T.FloatType(), False),
        T.StructField(COL_TIMESTAMP, T.LongType(), True),
    ]
)
NEGATIVES_SCHEMA = T.StructType(
    [T.StructField(COL_USER, T.IntegerType(), False), T.StructField(COL_ITEM, T.IntegerType(), False)]
)
ITEM_FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField("genres", T.ArrayType(T.FloatType(), True), False),
        T.StructField("decade", T.IntegerType(), False),  # 0 unknown, 1.. decades from the earliest
        T.StructField("terms", T.ArrayType(T.IntegerType(), True), False),  # top TF-IDF term ids, -1 padded
    ]
)
USER_FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_GENDER, T.IntegerType(), False),  # -1 unknown, 0 F, 1 M, 2 other
        T.StructField("age_bucket", T.IntegerType(), False),  # -1 unknown, else age // 10
        T.StructField(COL_OCCUPATION, T.IntegerType(), False),  # -1 unknown, else vocabulary index
    ]
)
HISTORIES_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField("items", T.ArrayType(T.IntegerType(), True), False),
        T.StructField("ratings", T.ArrayType(T.FloatType(), True), False),
        T.StructField("timestamps", T.ArrayType(T.LongType(), True), False),
        T.StructField("length", T.IntegerType(), False),
    ]
)


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """``df`` with exactly ``schema``'s columns, in order, cast to its types (nullability is Spark's to infer)."""
    return df.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])


def interactions(ratings: DataFrame) -> DataFrame:
    require_columns(ratings, [COL_USER, COL_ITEM, COL_RATING], "ratings")
    ts = F.col(COL_TIMESTAMP) if COL_TIMESTAMP in ratings.columns else F.lit(None)
    return conform(
        ratings.select(COL_USER, COL_ITEM, COL_RATING, F.lit(1.0).alias(COL_LABEL), ts.alias(COL_TIMESTAMP)),
        INTERACTIONS_SCHEMA,
    )


def sample_negatives(positives: DataFrame, n_items: int, ratio: int = 4, seed: int = 42) -> DataFrame:
    """``ratio`` items per positive of each user, uniform over ``[0, n_items)`` minus the user's positives.

    A user gets ``want = min(ratio * n_pos, n_items - n_pos)`` distinct
    negatives.  Users who need at least half of their unrated items (heavy
    raters in a small catalogue) enumerate the catalogue - at most
    ``(2 * ratio + 1) * n_pos`` rows - and keep the ``want`` with the smallest
    hash: exact.  The others draw ``pmod(xxhash64(seed, user, j), n_items)``
    for ``j = 1..m``, ``m`` three times the draws expected plus 64, and keep
    the first ``want`` new items; a shortfall there is possible but
    improbable, and :func:`negatives_shortfall` counts it.  No ``rand()``:
    re-evaluation draws the same rows.
    """
    if ratio < 1:
        raise ValueError(f"negative ratio must be >= 1, got {ratio}")
    pos = positives.select(COL_USER, COL_ITEM).distinct()
    per_user = pos.groupBy(COL_USER).agg(F.count("*").alias("_n"))
    free = F.lit(n_items) - F.col("_n")
    want = F.least(F.col("_n") * ratio, free)
    users = per_user.select(COL_USER, want.alias("_want"), free.alias("_free")).where(F.col("_want") > 0)
    dense = users.where(F.col("_want") * 2 >= F.col("_free"))
    sparse = users.where(F.col("_want") * 2 < F.col("_free"))
    draws = F.ceil(F.lit(3.0 * n_items) * F.col("_want") / F.col("_free") + F.lit(64)).cast("int")
    cand_sparse = sparse.select(COL_USER, "_want", F.explode(F.sequence(F.lit(1), draws)).alias("_j")).withColumn(
        COL_ITEM, F.pmod(F.xxhash64(F.lit(seed), F.col(COL_USER), F.col("_j")), F.lit(n_items)).cast("int")
    )
    cand_sparse = cand_sparse.groupBy(COL_USER, COL_ITEM).agg(F.min("_j").cast("long").alias("_key"), F.first("_want").alias("_want"))
    cand_dense = dense.select(COL_USER, "_want", F.explode(F.sequence(F.lit(0), F.lit(n_items - 1))).alias(COL_ITEM)).withColumn(
        "_key", F.xxhash64(F.lit(seed), F.col(COL_USER), F.col(COL_ITEM))
    )
    cand = cand_sparse.unionByName(cand_dense.select(COL_USER, COL_ITEM, "_key", "_want"))
    fresh = cand.join(pos, [COL_USER, COL_ITEM], "left_anti")
    w = Window.partitionBy(COL_USER).orderBy("_key", COL_ITEM)
    kept = fresh.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= F.col("_want"))
    return conform(kept.select(COL_USER, COL_ITEM), NEGATIVES_SCHEMA)


def negatives_shortfall(positives: DataFrame, negatives: DataFrame, n_items: int, ratio: int) -> int:
    """How many negatives fewer than asked were drawn, over all users (a scalar)."""
    per_user = positives.select(COL_USER, COL_ITEM).distinct().groupBy(COL_USER).agg(F.count("*").alias("_n"))
    got = negatives.groupBy(COL_USER).agg(F.count("*").alias("_g"))
    want = F.least(F.col("_n") * ratio, F.lit(n_items) - F.col("_n"))
    row = per_user.join(got, COL_USER, "left").agg(F.sum(want - F.coalesce(F.col("_g"), F.lit(0)))).first()
    return int(row[0] or 0)


def genre_vocabulary(items: DataFrame) -> list[str]:
    """Sorted distinct genres (a small, bounded list)."""
    rows = items.select(F.explode(COL_GENRES).alias("g")).where(F.col("g").isNotNull()).distinct().collect()
    return sorted(r["g"] for r in rows)


def item_features(items: DataFrame, genres: list[str], content_vectors: DataFrame | None = None, top_terms: int = 8) -> DataFrame:
    """Genre multi-hot, decade bucket and top content terms per item."""
    require_columns(items, [COL_ITEM, COL_GENRES], "items")
    multi_hot = (
        F.array(*[F.when(F.array_contains(COL_GENRES, g), F.lit(1.0)).otherwise(F.lit(0.0)) for g in genres])
        if genres
        else F.array().cast("array<float>")
    )
    year = F.col(COL_YEAR) if COL_YEAR in items.columns else F.lit(None).cast("int")
    first = items.agg(F.min(year)).first()[0]  # a scalar
    decade = F.when(year.isNull(), F.lit(0)).otherwise(F.floor(year / 10).cast("int") - F.lit((first or 0) // 10) + 1)
    out = items.select(COL_ITEM, multi_hot.alias("genres"), decade.alias("decade"))
    pad = F.array_repeat(F.lit(-1), top_terms)
    if content_vectors is not None and top_terms > 0:
        z = F.arrays_zip(F.col("values").alias("v"), F.col("indices").alias("i"))
        ranked = F.transform(F.slice(F.sort_array(z, asc=False), 1, top_terms), lambda s: s["i"])
        terms = content_vectors.select(COL_ITEM, ranked.alias("_t"))
        out = out.join(terms, COL_ITEM, "left").withColumn(
            "terms", F.slice(F.concat(F.coalesce(F.col("_t"), F.array().cast("array<int>")), pad), 1, top_terms)
        )
    else:
        out = out.withColumn("terms", F.slice(pad, 1, top_terms) if top_terms > 0 else F.array().cast("array<int>"))
    return conform(out, ITEM_FEATURES_SCHEMA)


def user_features(users: DataFrame | None, ratings: DataFrame) -> tuple[DataFrame, list[str]]:
    """Demographic ids for every user of ``ratings`` (-1 where unknown); and the occupation vocabulary."""
    ids = ratings.select(COL_USER).distinct()
    if users is None:
        return conform(
            ids.select(COL_USER, F.lit(-1).alias(COL_GENDER), F.lit(-1).alias("age_bucket"), F.lit(-1).alias(COL_OCCUPATION)),
            USER_FEATURES_SCHEMA,
        ), []
    occ = sorted(r[0] for r in users.select(COL_OCCUPATION).where(F.col(COL_OCCUPATION).isNotNull()).distinct().collect())
    occ_map = F.create_map(*[x for j, o in enumerate(occ) for x in (F.lit(o), F.lit(j))]) if occ else None
    g = F.upper(F.trim(F.col(COL_GENDER)))
    gender = F.when(g == "F", 0).when(g == "M", 1).when(g.isNull() | (g == ""), -1).otherwise(2)
    df = ids.join(users, COL_USER, "left").select(
        COL_USER,
        F.coalesce(gender, F.lit(-1)).alias(COL_GENDER),
        F.coalesce(F.floor(F.col(COL_AGE) / 10).cast("int"), F.lit(-1)).alias("age_bucket"),
        F.coalesce(occ_map[F.col(COL_OCCUPATION)] if occ_map is not None else F.lit(None), F.lit(-1)).alias(COL_OCCUPATION),
    )
    return conform(df, USER_FEATURES_SCHEMA), occ


def histories(ratings: DataFrame) -> DataFrame:
    """Each user's ratings in time order (ties by item): parallel arrays."""
    ts = F.col(COL_TIMESTAMP) if COL_TIMESTAMP in ratings.columns else F.lit(None).cast("long")
    agg = ratings.groupBy(COL_USER).agg(
        F.sort_array(F.collect_list(F.struct(ts.alias("t"), F.col(COL_ITEM).alias("i"), F.col(COL_RATING).cast("float").alias("r")))).alias(
            "_h"
        )
    )
    return conform(
        agg.select(
            COL_USER,
            F.col("_h.i").alias("items"),
            F.col("_h.r").alias("ratings"),
            F.col("_h.t").alias("timestamps"),
            F.size("_h").alias("length"),
        ),
        HISTORIES_SCHEMA,
    )


def metadata(
    n_users: int, n_items: int, genres: list[str], occupations: list[str], n_terms: int, split: str, **extra: Any
) -> dict[str, Any]:
    return {
        "n_users": n_users, "n_items": n_items, "n_genres": len(genres), "genres": genres,
        "n_occupations": len(occupations), "occupations": occupations, "n_terms": n_terms, "split": split,
        "schemas": {
            "interactions": INTERACTIONS_SCHEMA.simpleString(), "negatives": NEGATIVES_SCHEMA.simpleString(),
            "items": ITEM_FEATURES_SCHEMA.simpleString(), "users": USER_FEATURES_SCHEMA.simpleString(),
            "histories": HISTORIES_SCHEMA.simpleString(),
        },
        **extra,
    }  # fmt: skip
