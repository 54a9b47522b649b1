"""The final recommendations: the chosen blend's lists, explained, and the cold-start path.

The final stage refits the members of the top-N blend the blend stage chose
(on the validation part) on every rating, fuses their lists with the chosen
method and turns each row into something a person can read:

* ``contributors``: the members whose list held the item, each with its
  ``weight`` (its share of the item's fused score) and its ``rank`` there;
* ``explanation``: a sentence built from evidence in the ratings, never from
  the model's internals, so that it holds for any member:

  - the item the user rated (at or above their own mean) that is the
    recommended item's closest neighbour in an item-item similarity table
    fitted on every rating: "because you rated Heat (1995) 5★, and users who
    liked it liked this";
  - the item's genres the user rates above their own mean: "Crime and Drama,
    genres you rate above your average";
  - "popular in the last 30 days" when the item is among the most rated of
    the last days of the data (:func:`popular_lately`);
  - when none holds, what the members are: "users whose ratings resemble
    yours rated it highly" (collaborative members), "one of the most rated
    items" (popularity alone).

Users with no ratings (in the user table, not in the ratings) get the
cold-start path: the most rated items of the last ``recent_days`` days (all
time where too few), with ``source = "cold_start"`` and an explanation saying
that they have no ratings yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.blend.fusion import TOPN_METHODS, fuse
from recsys_spark.blend.level1 import BlendError
from recsys_spark.schemas import (
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_ID,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_USER_ID,
)

DAY = 86_400
COLD_START = "cold_start"
POPULAR_LATELY = "popular_lately"
# the columns of the final table, in order
COLUMNS = (
    COL_USER, COL_USER_ID, COL_RANK, COL_ITEM, COL_ITEM_ID, COL_TITLE, COL_SCORE, "contributors", "explanation", COL_SOURCE,
)  # fmt: skip
CONTRIBUTORS_TYPE = "array<struct<model:string,weight:double,rank:int>>"
# members whose lists come from popularity alone: the explanation of last resort says so
POPULARITY_MEMBERS = frozenset({"popularity", "global_mean", "item_mean", "popular_lately"})


def fuse_detailed(lists: Mapping[str, DataFrame], method: str, k: int) -> DataFrame:
    """Top-``k`` per user from the members' lists, each row with its contributors' shares and ranks.

    ``method``: ``rrf`` or ``borda`` (see :mod:`recsys_spark.blend`), or
    ``single`` with one member, whose own scores and ranks are kept.
    ``contributors`` is ordered by weight, then rank.
    """
    if method == "single":
        if len(lists) != 1:
            raise BlendError(f"a single-model top-N takes one member, got {sorted(lists)}")
        ((name, df),) = lists.items()
        contrib = F.array(F.struct(F.lit(name).alias("model"), F.lit(1.0).alias("weight"), F.col(COL_RANK).cast("int").alias("rank")))
        return df.where(F.col(COL_RANK) <= k).select(
            COL_USER, COL_ITEM, F.col(COL_RANK).cast("int"), F.col(COL_SCORE).cast("double"), contrib.alias("contributors")
        )
    if method not in TOPN_METHODS:
        raise BlendError(f"unknown top-N blend {method!r}; use single or one of {', '.join(TOPN_METHODS)}")
    return fuse(lists, method, k, detailed=True).select(COL_USER, COL_ITEM, COL_RANK, COL_SCORE, "contributors")


# -- evidence ---------------------------------------------------------------------------------------------
def _liked(ratings: DataFrame) -> DataFrame:
    """Each user's ratings at or above their own mean, with the deviation from it."""
    r = ratings.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double").alias(COL_RATING))
    mu = r.groupBy(COL_USER).agg(F.avg(COL_RATING).alias("_mu"))
    return r.join(mu, COL_USER).where(F.col(COL_RATING) >= F.col("_mu")).withColumn("_dev", F.col(COL_RATING) - F.col("_mu"))


def neighbour_evidence(recs: DataFrame, ratings: DataFrame, neighbors: DataFrame) -> DataFrame:
    """Per recommended ``(user, item)``: the user's liked item most similar to it (``because_item``, its rating).

    ``neighbors``: an item-item table ``(a, b, sim)``; only pairs with a
    positive similarity count.  Rows without such a neighbour are absent.
    """
    liked = _liked(ratings).select(COL_USER, F.col(COL_ITEM).alias("_j"), F.col(COL_RATING).alias("because_rating"))
    nb = neighbors.where(F.col("sim") > 0).select(F.col("a").alias(COL_ITEM), F.col("b").alias("_j"), "sim")
    cand = recs.select(COL_USER, COL_ITEM).join(nb, COL_ITEM).join(liked, [COL_USER, "_j"])
    w = Window.partitionBy(COL_USER, COL_ITEM).orderBy(F.desc("sim"), F.desc("because_rating"), F.asc("_j"))
    return (
        cand.withColumn("_n", F.row_number().over(w))
        .where(F.col("_n") == 1)
        .select(COL_USER, COL_ITEM, F.col("_j").alias("because_item"), "because_rating", F.col("sim").alias("because_sim"))
    )


def genre_evidence(recs: DataFrame, ratings: DataFrame, items: DataFrame, n_genres: int = 2) -> DataFrame:
    """Per recommended ``(user, item)``: up to ``n_genres`` of its genres the user rates above their own mean."""
    genres = items.select(COL_ITEM, F.explode(COL_GENRES).alias("_g"))
    taste = _liked(ratings).where(F.col("_dev") > 0).join(genres, COL_ITEM).groupBy(COL_USER, "_g").agg(F.sum("_dev").alias("_t"))
    hits = recs.select(COL_USER, COL_ITEM).join(genres, COL_ITEM).join(taste, [COL_USER, "_g"])
    ordered = F.slice(F.array_sort(F.collect_list(F.struct((-F.col("_t")).alias("o"), F.col("_g").alias("g")))), 1, n_genres)
    return hits.groupBy(COL_USER, COL_ITEM).agg(F.transform(ordered, lambda s: s["g"]).alias("liked_genres"))


def popular_lately(ratings: DataFrame, recent_days: int, top: int) -> tuple[DataFrame, int]:
    """The ``top`` most rated items of the last days of the data: ``(item_idx, score, lately_rank)`` and the days.

    The window starts at ``recent_days`` before the last rating and doubles
    until it holds ``top`` distinct items; ``0`` days means it grew to the
    whole data (or there are no timestamps): the items are then the most
    rated of all time, and the explanations say so.  The ``top`` rows come to
    the driver (they are few) and go back as a small table.
    """
    spark = ratings.sparkSession
    has_ts = COL_TIMESTAMP in ratings.columns
    days = 0
    window = ratings
    if has_ts:
        first, last = ratings.agg(F.min(COL_TIMESTAMP), F.max(COL_TIMESTAMP)).first()  # scalars
        if last is not None:
            span = (last - first) / DAY
            d = recent_days
            while d < span:  # bounded: log2(span / recent_days) steps
                recent = ratings.where(F.col(COL_TIMESTAMP) > last - d * DAY)
                if recent.select(COL_ITEM).distinct().limit(top).count() >= top:
                    window, days = recent, d
                    break
                d *= 2
    counts = window.groupBy(COL_ITEM).agg(F.count("*").cast("double").alias(COL_SCORE))
    rows = counts.orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM)).limit(top).collect()  # bounded: top rows
    table = spark.createDataFrame(
        [(int(r[COL_ITEM]), float(r[COL_SCORE]), i + 1) for i, r in enumerate(rows)],
        f"{COL_ITEM} int, {COL_SCORE} double, lately_rank int",
    )
    return table, days


def lately_phrase(days: int) -> str:
    return f"popular in the last {days} days" if days else "among the most rated items"


def cold_start_lists(cold_users: DataFrame, lately: DataFrame, k: int, days: int) -> DataFrame:
    """Top-``k`` of the recent most-rated items for each user without ratings, with that said."""
    why = "You have no ratings yet, so these are the most rated items" + (f" of the last {days} days" if days else "")
    top = lately.where(F.col("lately_rank") <= k)
    contrib = F.array(
        F.struct(F.lit(POPULAR_LATELY).alias("model"), F.lit(1.0).alias("weight"), F.col("lately_rank").cast("int").alias("rank"))
    )
    return cold_users.select(COL_USER).crossJoin(F.broadcast(top)).select(
        COL_USER, COL_ITEM, F.col("lately_rank").cast("int").alias(COL_RANK), F.col(COL_SCORE).cast("double"),
        contrib.alias("contributors"), F.lit(why + ".").alias("explanation"), F.lit(COLD_START).alias(COL_SOURCE),
    )  # fmt: skip


def _stars(col: str) -> Column:
    return F.regexp_replace(F.format_number(F.col(col), 1), r"\.0$", "")


def _and(arr: Column) -> Column:
    """``a``, ``a and b``, ``a, b and c``."""
    n = F.size(arr)
    head = F.array_join(F.slice(arr, 1, F.greatest(n - 1, F.lit(1))), ", ")
    return F.when(n <= 1, F.array_join(arr, "")).otherwise(F.concat(head, F.lit(" and "), F.element_at(arr, -1)))


def explain(
    fused: DataFrame, ratings: DataFrame, items: DataFrame, neighbors: DataFrame | None, lately: DataFrame, days: int = 0,
) -> DataFrame:  # fmt: skip
    """``fused`` (with ``contributors``) plus ``explanation`` (never empty) and ``source``, and the evidence columns."""
    recs = fused.select(COL_USER, COL_ITEM)
    out = fused
    if neighbors is not None:
        out = out.join(neighbour_evidence(recs, ratings, neighbors), [COL_USER, COL_ITEM], "left")
    else:
        out = out.withColumn("because_item", F.lit(None).cast("int")).withColumn("because_rating", F.lit(None).cast("double"))
    out = out.join(genre_evidence(recs, ratings, items), [COL_USER, COL_ITEM], "left")
    out = out.join(F.broadcast(lately.select(COL_ITEM, F.lit(True).alias("_lately"))), COL_ITEM, "left")
    names = items.select(F.col(COL_ITEM).alias("because_item"), F.coalesce(COL_TITLE, COL_ITEM_ID).alias("_bt"))
    out = out.join(F.broadcast(names), "because_item", "left")
    because = F.when(
        F.col("because_item").isNotNull(),
        F.concat(
            F.lit("because you rated "), F.col("_bt"), F.lit(" "), _stars("because_rating"),
            F.lit("★, and users who liked it liked this"),
        ),
    )  # fmt: skip
    genres = F.when(
        F.size(F.coalesce("liked_genres", F.array())) > 0,
        F.concat(_and(F.col("liked_genres")), F.lit(", genres you rate above your average")),
    )
    lately_txt = F.when(F.col("_lately"), F.lit(lately_phrase(days)))
    models = F.transform("contributors", lambda c: c["model"])
    only_popular = F.forall(models, lambda m: m.isin(*POPULARITY_MEMBERS))
    last_resort = F.when(only_popular, F.lit("one of the most rated items")).otherwise(
        F.lit("users whose ratings resemble yours rated it highly")
    )
    body = F.concat_ws("; ", because, genres, lately_txt)
    body = F.when(body == "", last_resort).otherwise(body)
    by = F.concat(F.lit(" (ranked by "), _and(models), F.lit(")"))
    sentence = F.concat(F.upper(F.substring(body, 1, 1)), F.substring(body, 2, 1 << 20), by, F.lit("."))
    return out.withColumn("explanation", sentence).withColumn(COL_SOURCE, F.lit("blend")).drop("_bt", "_lately")


def final_table(
    explained: DataFrame, cold: DataFrame | None, user_map: DataFrame, items: DataFrame,
) -> DataFrame:  # fmt: skip
    """The rows of every user (explained lists and cold-start lists) with raw ids and titles, in :data:`COLUMNS`."""
    rows = explained.select(COL_USER, COL_ITEM, COL_RANK, COL_SCORE, "contributors", "explanation", COL_SOURCE)
    if cold is not None:
        rows = rows.unionByName(cold.select(*rows.columns))
    return (
        rows.join(user_map.select(COL_USER, COL_USER_ID), COL_USER)
        .join(F.broadcast(items.select(COL_ITEM, COL_ITEM_ID, COL_TITLE)), COL_ITEM)
        .select(*COLUMNS)
    )


def contributors_text(col: str = "contributors") -> Column:
    """``als_implicit 0.62, item_knn 0.38``: the contributors as one string (CSV export, printing)."""
    return F.array_join(F.transform(col, lambda c: F.concat(c["model"], F.lit(" "), F.format_number(c["weight"], 2))), ", ")


def users_without_ratings(user_map: DataFrame, ratings: DataFrame) -> DataFrame:
    return user_map.select(COL_USER).join(ratings.select(COL_USER).distinct(), COL_USER, "left_anti")


def check_members(members: Sequence[str], method: str) -> None:
    if not members:
        raise BlendError("the final job needs at least one member (the blend stage chose none)")
    if method == "single" and len(members) != 1:
        raise BlendError(f"a single-model top-N takes one member, got {list(members)}")
