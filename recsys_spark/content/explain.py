"""Explanations of recommendations, and the terms whose items are rated above or below the baseline."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasBaseline
from recsys_spark.content.features import FEATURE, IDX, VAL, to_long
from recsys_spark.recommender import (
    Scale,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_RATING,
    COL_TITLE,
    COL_USER,
)

log = logging.getLogger(__name__)



def explain(
    recs: DataFrame,
    ratings: DataFrame,
    vectors: DataFrame,
    vocabulary: DataFrame,
    items: DataFrame,
    counts: DataFrame | None = None,
    n_terms: int = 3,
    segments: DataFrame | None = None,
    lately: bool = False,
) -> DataFrame:
    """``recs`` plus ``because_item``, ``because_rating``, ``shared`` (terms) and ``reason``.

    For a recommended item ``i`` of user ``u``: the rated item ``j`` with the
    largest ``(r_uj - mean_u) * cos(i, j)`` (the largest ``r_uj * cos`` when no
    rated item is above the mean), and the genre/tag/decade terms with the
    largest ``profile_f * x_if`` (profile over the user's ratings, mean-centred,
    positive contributions only).  Only the user's own training ratings are
    read, so a reason never names an item the user did not rate.  With
    neither, the item came from the popularity prior: "popular with users
    aged 25-34" where ``segments`` (``user_idx, segment_label``) labels the
    user, else "popular with other users"; "popular lately ..." with
    ``lately`` (a trend prior: the counts of the days before the user's time).
    """
    r = ratings.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double").alias(COL_RATING))
    u = recs.select(COL_USER).distinct()
    mine = (
        r.join(u, COL_USER)
        .join(vectors, COL_ITEM)
        .select(COL_USER, F.col(COL_ITEM).alias("_j"), COL_RATING, IDX, VAL)
    )
    # the same vectors on both sides of the cogroup: fresh columns (no dataset tag) on this side, or
    # Spark's self-join check may call them ambiguous
    fresh = vectors.select(COL_ITEM, F.col(IDX).alias(IDX, metadata={}), F.col(VAL).alias(VAL, metadata={}))
    asked = recs.select(COL_USER, COL_ITEM).join(fresh, COL_ITEM, "left")
    names = {
        int(row[FEATURE]): (row["group"], row["term"])
        for row in vocabulary.where(F.col("group").isin("genres", "tags", "year")).collect()
    }
    # the vocabulary is small (terms, not items): shipped to the tasks as a dict

    def per_user(asked_pdf: pd.DataFrame, mine_pdf: pd.DataFrame) -> pd.DataFrame:
        if asked_pdf.empty:
            return pd.DataFrame(
                {COL_USER: [], COL_ITEM: [], "because_item": [], "because_rating": [], "shared": []}
            )
        uid = int(asked_pdf[COL_USER].iloc[0])
        rows = []
        if mine_pdf.empty:
            for i in asked_pdf[COL_ITEM]:
                rows.append((uid, int(i), None, None, []))
            return pd.DataFrame(
                rows, columns=[COL_USER, COL_ITEM, "because_item", "because_rating", "shared"]
            )
        rr = mine_pdf[COL_RATING].to_numpy(dtype=np.float64)
        dev = rr - rr.mean()
        M = [
            dict(
                zip(
                    np.asarray(a, dtype=np.int64).tolist(),
                    np.asarray(b, dtype=np.float64).tolist(),
                    strict=True,
                )
            )
            for a, b in zip(mine_pdf[IDX], mine_pdf[VAL], strict=True)
        ]
        prof: dict[int, float] = {}
        for d, m in zip(dev, M, strict=True):
            for f, x in m.items():
                prof[f] = prof.get(f, 0.0) + d * x
        for i, idx, val in zip(asked_pdf[COL_ITEM], asked_pdf[IDX], asked_pdf[VAL], strict=True):
            if idx is None:
                rows.append((uid, int(i), None, None, []))
                continue
            x = dict(
                zip(
                    np.asarray(idx, dtype=np.int64).tolist(),
                    np.asarray(val, dtype=np.float64).tolist(),
                    strict=True,
                )
            )
            sims = np.array([sum(v * m.get(f, 0.0) for f, v in x.items()) for m in M])
            w = dev * sims if (dev > 0).any() else rr * sims
            if (dev > 0).any():
                w = np.where(dev > 0, w, -np.inf)
            j = int(np.argmax(w))
            best = (
                (int(mine_pdf["_j"].iloc[j]), float(rr[j]))
                if np.isfinite(w[j]) and sims[j] > 0
                else (None, None)
            )
            contrib = sorted(
                (
                    (prof.get(f, 0.0) * v, f)
                    for f, v in x.items()
                    if f in names and prof.get(f, 0.0) * v > 0
                ),
                reverse=True,
            )
            terms = [names[f][1].removeprefix("decade:") for _, f in contrib[:n_terms]]
            rows.append((uid, int(i), best[0], best[1], terms))
        return pd.DataFrame(
            rows, columns=[COL_USER, COL_ITEM, "because_item", "because_rating", "shared"]
        )

    schema = f"{COL_USER} int, {COL_ITEM} int, because_item int, because_rating double, shared array<string>"
    why = asked.groupBy(COL_USER).cogroup(mine.groupBy(COL_USER)).applyInPandas(per_user, schema)
    titles = items.select(
        F.col(COL_ITEM).alias("because_item"), F.col(COL_TITLE).alias("because_title")
    )
    why = why.join(titles, "because_item", "left")
    stars = F.format_string(
        "%s", F.regexp_replace(F.format_number(F.col("because_rating"), 1), r"\.0$", "")
    )
    because = F.when(
        F.col("because_item").isNotNull(),
        F.concat(
            F.lit("because you rated "),
            F.coalesce(F.col("because_title"), F.col("because_item").cast("string")),
            F.lit(" "),
            stars,
            F.lit("★"),
        ),
    )
    shares = F.when(F.size("shared") > 0, F.concat(F.lit("shares: "), F.array_join("shared", ", ")))
    reason = F.coalesce(F.concat_ws("; ", because, shares), F.lit(""))
    pop = "popular lately with" if lately else "popular with"
    popular = F.lit(f"{pop} other users")
    if segments is not None:
        why = why.join(segments.select(COL_USER, "segment_label"), COL_USER, "left")
        popular = F.coalesce(F.concat(F.lit(f"{pop} users "), F.col("segment_label")), popular)
    reason = F.when(reason == "", popular).otherwise(reason)
    return recs.join(
        why.select(
            COL_USER,
            COL_ITEM,
            "because_item",
            "because_title",
            "because_rating",
            "shared",
            reason.alias("reason"),
        ),
        [COL_USER, COL_ITEM],
        "left",
    )


def term_signal(
    ratings: DataFrame,
    vectors: DataFrame,
    vocabulary: DataFrame,
    min_items: int = 10,
    top: int = 20,
) -> DataFrame:
    """Terms whose items are rated above or below what the bias baseline expects.

    Per term: the items having it (``items``), their ratings (``ratings``), the
    mean baseline residual of those ratings (``lift``, in stars) with its
    standard error (``se``) and ``z = lift / se``; the ``top`` terms by
    ``|z|`` among those on at least ``min_items`` items.
    """
    base = BiasBaseline(reg_user=15.0, reg_item=1e9, scale=Scale(-1e9, 1e9)).fit(
        ratings
    )  # item bias off: the term explains it
    res = base.with_prediction(ratings.select(COL_USER, COL_ITEM, COL_RATING), "_b", "_s").select(
        COL_ITEM, (F.col(COL_RATING) - F.col("_b")).alias("_e")
    )
    per_item = res.groupBy(COL_ITEM).agg(
        F.sum("_e").alias("_se"),
        F.sum(F.col("_e") * F.col("_e")).alias("_se2"),
        F.count("*").alias("_n"),
    )
    long = to_long(vectors).select(COL_ITEM, FEATURE)
    agg = (
        long.join(per_item, COL_ITEM)
        .groupBy(FEATURE)
        .agg(
            F.countDistinct(COL_ITEM).alias("items"),
            F.sum("_n").alias("ratings"),
            F.sum("_se").alias("_s"),
            F.sum("_se2").alias("_s2"),
        )
    )
    lift = F.col("_s") / F.col("ratings")
    var = F.greatest(F.col("_s2") / F.col("ratings") - lift * lift, F.lit(1e-12))
    out = agg.where(F.col("items") >= min_items).select(
        FEATURE, "items", "ratings", lift.alias("lift"), F.sqrt(var / F.col("ratings")).alias("se")
    )
    out = out.withColumn("z", F.col("lift") / F.col("se")).join(
        vocabulary.select(FEATURE, "group", "term"), FEATURE
    )
    # |z| rounded before the tie-break: terms on the same items tie exactly in theory, and their sums,
    # added in a shuffle's arrival order, differ in the last bits, so which of them made the cut
    # changed from run to run
    return out.orderBy(F.desc(F.round(F.abs("z"), 9)), F.asc(FEATURE)).limit(top)
