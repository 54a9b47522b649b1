"""Popularity priors of top-N: demographic segments and trends over time."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import lineage
from recsys_spark.schemas import (
    COL_AGE,
    COL_GENDER,
    COL_ITEM,
    COL_OCCUPATION,
    COL_SEGMENT,
    COL_TIMESTAMP,
    COL_USER,
)
from recsys_spark.split import hash_uniform

log = logging.getLogger(__name__)

SEGMENT_ATTRIBUTES = ("gender", "age", "occupation")
DEFAULT_AGE_EDGES = (18, 25, 35, 45, 56)  # the age groups MovieLens 1M asks for: under 18, 18-24, ..., 56+
SEGMENTS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_SEGMENT, T.IntegerType(), False),
        T.StructField("segment_label", T.StringType(), True),
    ]
)


def user_segments(users: DataFrame, attributes: list[str], age_edges: tuple[int, ...] | list[int] = DEFAULT_AGE_EDGES) -> DataFrame:
    """``(user_idx, segment, segment_label)``: users equal in every one of ``attributes`` share a segment id 1..S.

    ``users`` is the ingested users table (USERS_SCHEMA); ``attributes`` are
    among ``gender``, ``age`` (binned at ``age_edges``: ``age < e_0`` is bin 0,
    ``e_0 <= age < e_1`` bin 1, ...) and ``occupation``.  A user with any of
    them unknown gets segment 0: the global prior.  Ids follow the sorted
    segment keys, so they are stable for a given users table.  The label
    reads like ``aged 25-34`` (``gender F, aged 25-34, occupation artist``);
    null for segment 0.
    """
    bad = sorted(set(attributes) - set(SEGMENT_ATTRIBUTES))
    if bad or not attributes:
        raise ValueError(f"segments must be a non-empty list drawn from {list(SEGMENT_ATTRIBUTES)}, got {attributes!r}")
    edges = sorted(int(e) for e in age_edges)
    age_names = (
        [f"under {edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"] if edges else ["any"]
    )
    age_label = F.create_map(*[x for j, n in enumerate(age_names) for x in (F.lit(j), F.lit(f"aged {n}"))])
    parts, labels = [], []
    for a in attributes:
        if a == "age":
            age = F.col(COL_AGE)
            b = sum((F.when(age >= e, 1).otherwise(0) for e in edges), F.lit(0))
            parts.append(F.when(age.isNotNull(), F.format_string("%02d", b)))
            labels.append(age_label[b])
        elif a == "gender":
            parts.append(F.nullif(F.upper(F.trim(F.col(COL_GENDER))), F.lit("")))
            labels.append(F.concat(F.lit("gender "), parts[-1]))
        else:
            parts.append(F.nullif(F.lower(F.trim(F.col(COL_OCCUPATION))), F.lit("")))
            labels.append(F.concat(F.lit("occupation "), parts[-1]))
    unknown = F.lit(False)
    for c in parts:
        unknown = unknown | c.isNull()
    keyed = users.select(
        COL_USER, F.when(~unknown, F.concat_ws("|", *parts)).alias("_k"), F.when(~unknown, F.concat_ws(", ", *labels)).alias("_l")
    )
    # one key per segment: a few dozen at most (6 age groups x 2 genders x 21 occupations in ML-100K)
    keys = sorted(r[0] for r in keyed.where(F.col("_k").isNotNull()).select("_k").distinct().collect())
    ids = F.create_map(*[x for j, key in enumerate(keys) for x in (F.lit(key), F.lit(j + 1))]) if keys else None
    seg = F.coalesce(ids[F.col("_k")], F.lit(0)) if ids is not None else F.lit(0)
    return keyed.select(F.col(COL_USER).cast("int").alias(COL_USER), seg.cast("int").alias(COL_SEGMENT), F.col("_l").alias("segment_label"))


def segment_prior(ratings: DataFrame, segments: DataFrame | None, shrink: float) -> DataFrame:
    """``(segment, item_idx, prior)``: segment 0 is the global popularity prior ``log(1 + n_j) / log(1 + max n)``
    in [0, 1]; segment ``s > 0`` puts in ``n_j`` the segment's own count, scaled to the whole and shrunk towards
    the global shares:
    ``n_j(s) = N (n_sj + m n_j / N) / (N_s + m)`` (``N``, ``N_s`` the ratings in all and in the segment,
    ``m = shrink`` ratings' worth of the global shares), on the same ``log(1 + n) / log(1 + max n)`` scale.
    A segment without ratings (with ``m = 0``) gets the global prior."""
    n = ratings.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    tot = n.agg(F.sum("_n").alias("_tot"), F.max("_n").alias("_m"))
    n = n.crossJoin(F.broadcast(tot))  # (item_idx, _n, _tot, _m)
    scale = F.log1p(F.greatest("_m", F.lit(1)))

    def glob(n: DataFrame) -> DataFrame:
        return n.select(F.lit(0).alias(COL_SEGMENT), COL_ITEM, (F.log1p("_n") / scale).alias("prior"))

    if segments is None:
        return glob(n)
    n = n.transform(lineage.cut)  # read twice below: segment 0 and every other segment's grid
    seg = segments.where(F.col(COL_SEGMENT) > 0)
    rs = ratings.select(COL_USER, COL_ITEM).join(seg, COL_USER)
    nsj = rs.groupBy(COL_SEGMENT, COL_ITEM).agg(F.count("*").alias("_seg_n"))
    ns = rs.groupBy(COL_SEGMENT).agg(F.count("*").alias("_seg_tot"))
    m = F.lit(float(shrink))
    grid = (
        seg.select(COL_SEGMENT).distinct().crossJoin(n)
        .join(nsj, [COL_SEGMENT, COL_ITEM], "left").join(ns, COL_SEGMENT, "left")
        .fillna(0, ["_seg_n", "_seg_tot"])
    )  # fmt: skip
    eff = F.when(
        F.col("_seg_tot") + m > 0, F.col("_tot") * (F.col("_seg_n") + m * F.col("_n") / F.col("_tot")) / (F.col("_seg_tot") + m)
    ).otherwise(F.col("_n"))
    return glob(n).unionByName(grid.select(COL_SEGMENT, COL_ITEM, (F.log1p(eff) / scale).alias("prior")))


DAY_S = 86400


def counted_ratings(ratings: DataFrame, skip_first: int, seed: int = 42) -> DataFrame:
    """The ratings a popularity prior counts: all, or each user's without their first ``skip_first`` (by time; ties
    by a seeded hash of (user, item)).  A user's first ratings are an odd sample of what they go on to rate (sign-up
    pages show everyone the same films).  Needs ``timestamp`` when ``skip_first > 0``."""
    if skip_first <= 0:
        return ratings
    if COL_TIMESTAMP not in ratings.columns:
        raise ValueError(f"prior_skip_first={skip_first} needs the ratings' {COL_TIMESTAMP}")
    w = Window.partitionBy(COL_USER).orderBy(
        F.col(COL_TIMESTAMP).asc_nulls_last(), hash_uniform(seed, F.lit("first"), COL_USER, COL_ITEM), COL_ITEM
    )
    return ratings.withColumn("_pos", F.row_number().over(w)).where(F.col("_pos") > skip_first).drop("_pos")


def trend_prior(
    ratings: DataFrame, segments: DataFrame | None, shrink: float, trend_days: float, trend_shrink: float,
    step_days: float = 7.0, counted: DataFrame | None = None, max_cells: int | None = None,
) -> tuple[DataFrame, DataFrame] | None:  # fmt: skip
    """``(prior, groups)``: a popularity prior per (segment, time) group, and ``(user_idx, segment, segment_label)``
    mapping each user to their group (``segment`` holds the group id; the label stays the demographic one).

    A user's time is their latest rating (``ratings``), cut to periods of ``step_days``; their prior counts
    the ratings of the ``trend_days`` before their period (never later ones), as shares shrunk towards the
    all-time shares by ``trend_shrink`` ratings:
    ``p_j(t) = (n_tj + m_t n_j / N) / (N_t + m_t)``, and ``n_j(t) = N p_j(t)``.  A demographic segment
    (``segments``, 0: none) multiplies that by its all-time lift, shrunk as in :func:`segment_prior`:
    ``n_j(s, t) = n_j(t) (n_sj + m p_j) / ((N_s + m) p_j)`` (``p_j = n_j / N``); the windows are too thin to
    count per segment.  All on the global ``log(1 + n) / log(1 + max n)`` scale.
    Users in ``segments`` with no rating get the latest period.  Group 0 is the all-time global prior.
    ``counted``: the ratings counted (default ``ratings``; see :func:`counted_ratings`).

    The prior is a dense (group, item) table: with ``max_cells``, ``None`` is returned (nothing computed
    past the groups and the item counts) when groups x items would exceed it, and the caller falls back."""
    counted = ratings if counted is None else counted
    step = float(step_days) * DAY_S
    window = max(1, round(float(trend_days) / float(step_days)))

    def period(c: str | F.Column) -> F.Column:
        return F.floor((F.col(c) if isinstance(c, str) else c).cast("double") / step).cast("long")

    up = ratings.groupBy(COL_USER).agg(period(F.max(COL_TIMESTAMP)).alias("_b"))
    now = ratings.agg(period(F.max(COL_TIMESTAMP))).first()[0]  # one row
    if segments is not None:
        ug = up.join(segments.select(COL_USER, F.col(COL_SEGMENT).alias("_s"), "segment_label"), COL_USER, "full")
        ug = ug.select(COL_USER, F.coalesce("_s", F.lit(0)).alias("_s"), F.coalesce("_b", F.lit(now)).alias("_b"), "segment_label")
    else:
        ug = up.select(COL_USER, F.lit(0).alias("_s"), "_b", F.lit(None).cast("string").alias("segment_label"))
    ug = ug.where(F.col("_b").isNotNull()).transform(lineage.cut)  # users with no timestamp stay on group 0
    # one row per (segment, period) users have: hundreds (a few age groups x the weeks users' latest ratings fall in)
    pairs = sorted((int(r["_s"]), int(r["_b"])) for r in ug.select("_s", "_b").distinct().collect())
    n = counted.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    tot = n.agg(F.sum("_n").alias("_tot"), F.max("_n").alias("_m"))
    n = n.crossJoin(F.broadcast(tot)).transform(lineage.cut)  # (item_idx, _n, _tot, _m), read twice
    if max_cells is not None:
        n_items = n.count()  # one row per counted item, already materialized
        if len(pairs) * n_items > max_cells:
            log.warning(
                "trend prior: %d (segment, period) groups x %d items = %d cells, over trend_max_cells %d: not computed",
                len(pairs), n_items, len(pairs) * n_items, max_cells,
            )  # fmt: skip
            return None
    keys = ratings.sparkSession.createDataFrame([(sg, b, j + 1) for j, (sg, b) in enumerate(pairs)], "_s int, _b long, _gid int")
    groups = ug.join(F.broadcast(keys), ["_s", "_b"]).select(
        F.col(COL_USER).cast("int").alias(COL_USER), F.col("_gid").cast("int").alias(COL_SEGMENT), "segment_label"
    )

    scale = F.log1p(F.greatest("_m", F.lit(1)))
    cjp = counted.where(F.col(COL_TIMESTAMP).isNotNull()).groupBy(COL_ITEM, period(COL_TIMESTAMP).alias("_p")).agg(F.count("*").alias("_c"))
    per = F.broadcast(keys.select("_b").distinct())
    in_window = cjp.join(per, (F.col("_p") >= F.col("_b") - window) & (F.col("_p") < F.col("_b")))
    ntj = in_window.groupBy("_b", COL_ITEM).agg(F.sum("_c").alias("_tn"))
    nt = in_window.groupBy("_b").agg(F.sum("_c").alias("_ttot"))
    grid = keys.crossJoin(n).join(ntj, ["_b", COL_ITEM], "left").join(nt, "_b", "left").fillna(0, ["_tn", "_ttot"])
    mt = F.lit(float(trend_shrink))
    p_t = F.when(F.col("_ttot") + mt > 0, (F.col("_tn") + mt * F.col("_n") / F.col("_tot")) / (F.col("_ttot") + mt)).otherwise(
        F.col("_n") / F.col("_tot")
    )
    eff = F.col("_tot") * p_t
    if segments is not None:
        rs = counted.select(COL_USER, COL_ITEM).join(
            segments.where(F.col(COL_SEGMENT) > 0).select(COL_USER, F.col(COL_SEGMENT).alias("_s")), COL_USER
        )
        nsj = rs.groupBy("_s", COL_ITEM).agg(F.count("*").alias("_seg_n"))
        ns = rs.groupBy("_s").agg(F.count("*").alias("_seg_tot"))
        grid = grid.join(nsj, ["_s", COL_ITEM], "left").join(ns, "_s", "left").fillna(0, ["_seg_n", "_seg_tot"])
        m = F.lit(float(shrink))
        p_all = F.col("_n") / F.col("_tot")
        lift = (F.col("_seg_n") + m * p_all) / ((F.col("_seg_tot") + m) * p_all)  # the segment's all-time lift
        seg_eff = F.when(F.col("_seg_tot") + m > 0, eff * lift).otherwise(eff)
        eff = F.when(F.col("_s") > 0, seg_eff).otherwise(eff)
    glob = n.select(F.lit(0).alias(COL_SEGMENT), COL_ITEM, (F.log1p("_n") / scale).alias("prior"))
    prior = glob.unionByName(grid.select(F.col("_gid").cast("int").alias(COL_SEGMENT), COL_ITEM, (F.log1p(eff) / scale).alias("prior")))
    return prior, groups
