"""final: the production fit of the chosen blend and the explained top-N of every user.

The blend stage chose, on the validation part, which members to fuse and how
(``blend/_manifest.json``: ``topn.chosen``); ``final.members`` / ``final.method``
override that choice.  Here those members are refitted on **every** rating (a
production fit, separate from the evaluation fit of the predict stage, and
recorded as such in the manifest), each recommends for every user with
ratings, their lists are fused, and each row gets its contributors and an
explanation (:mod:`recsys_spark.blend.final`).  Users of the user table with no
rating get the cold-start path.  The table is written partitioned by
``bucket = user_idx % final.buckets``, so ``recsys-spark recommend --user``
reads one bucket.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark.blend import final as fin
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.neighbors import KNN
from recsys_spark.schemas import COL_ITEM, COL_ITEM_ID, COL_RANK, COL_TITLE, COL_USER, COL_USER_ID
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)
TABLE = "recommendations"
COLD_TABLE = "cold_start"  # the list of a user with no ratings (rank, item, title, score, explanation)


def chosen(spark: SparkSession, cfg: Config) -> tuple[str, list[str], str]:
    """``(method, members, why)``: ``final.members`` when set, else the blend stage's top-N choice."""
    fc = cfg.final
    if fc.members:
        for m in fc.members:
            layout.check_model(m, "final.members")
        method = fc.method or ("single" if len(fc.members) == 1 else "rrf")
        return method, list(fc.members), "final.members"
    manifest = fs.read_manifest(spark, layout.blend(cfg))
    if manifest is None:
        raise FileNotFoundError(f"{layout.blend(cfg)} not found: run the blend stage first (recsys-spark blend)")
    pick = manifest["counts"]["topn"]["chosen"]
    fin.check_members(pick["members"], pick["method"])
    why = "blend stage (validation NDCG)" if not manifest["counts"]["topn"].get("untrained") else "blend stage (untrained)"
    return pick["method"], list(pick["members"]), why


def _explainer(cfg: Config, scale: Any, ratings: DataFrame, fitted: dict[str, Any]) -> tuple[DataFrame | None, str]:
    """The item-item similarity table the explanations read: the item-kNN member's, else one fitted here."""
    name = cfg.final.explainer
    if not name:
        return None, "none"
    layout.check_model(name, "final.explainer")
    model = fitted.get(name)
    if model is not None and hasattr(model, "neighbors") and not model.params.get("user_based"):
        return model.neighbors, f"{name} (the member's own table)"
    models_dir = layout.models_dir_of(cfg)
    params = {**registry.model_params(name, models_dir), "max_neighbors": cfg.final.max_neighbors or None}
    est = registry.build(name, scale, params, models_dir)
    if not isinstance(est, KNN) or est.user_based:
        raise ValueError(f"final.explainer: {name!r} is not an item-based kNN model")
    _, table = est.neighbor_table(ratings)
    return table, f"{name} (fitted on every rating for the explanations)"


def run_final(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Refit the chosen members on every rating; write the explained top-N of every user."""
    method, names, why = chosen(spark, cfg)
    k = cfg.models.k
    fc = cfg.final
    models_dir = layout.models_dir_of(cfg)

    def body(tmp: str) -> dict[str, Any]:
        scale = layout.rating_scale(spark, cfg)
        ratings = layout.read_ingested(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
        user_map = layout.read_ingested(spark, cfg, "user_map")
        items = layout.read_ingested(spark, cfg, "items").persist(StorageLevel.MEMORY_AND_DISK)
        side = layout.side_data(spark, cfg) if any(registry.uses_side(n) for n in names) else None
        n_ratings = ratings.count()
        known = ratings.select(COL_USER).distinct().persist(StorageLevel.MEMORY_AND_DISK)
        fitted: dict[str, Any] = {}
        lists: dict[str, DataFrame] = {}
        for n in names:  # the production fit: every rating, the member's evaluated parameters
            log.info("final: fitting %s on every rating (%d) for the production lists", n, n_ratings)
            fitted[n] = registry.build(n, scale, registry.model_params(n, models_dir), models_dir).fit_with(ratings, side)
            fitted[n].recommend(known, k).write.parquet(f"{tmp}/members/{n}")
            lists[n] = spark.read.parquet(f"{tmp}/members/{n}")
            log.info("final: %s recommended for %d users", n, lists[n].select(COL_USER).distinct().count())
        fused = fin.fuse_detailed(lists, method, k)
        neighbors, explainer = _explainer(cfg, scale, ratings, fitted)
        lately, days = fin.popular_lately(ratings, fc.recent_days, max(fc.popular_top, k))
        lately = lately.persist(StorageLevel.MEMORY_AND_DISK)
        log.info("final: explaining the lists (item neighbours by %s; popular: last %s days)", explainer, days or "all")
        explained = fin.explain(fused, ratings, items, neighbors, lately.where(F.col("lately_rank") <= fc.popular_top), days)
        cold_users = fin.users_without_ratings(user_map, ratings)
        cold = fin.cold_start_lists(cold_users, lately, k, days)
        # the list a user unknown to the ratings and the user table gets (the served model answers new users with it)
        nobody = spark.createDataFrame([(-1,)], f"{COL_USER} int")
        anyone = fin.cold_start_lists(nobody, lately, k, days).drop(COL_USER)
        anyone.join(F.broadcast(items.select(COL_ITEM, COL_ITEM_ID, COL_TITLE)), COL_ITEM).coalesce(1).write.parquet(f"{tmp}/{COLD_TABLE}")
        table = fin.final_table(explained, cold, user_map, items).withColumn("bucket", F.col(COL_USER) % fc.buckets)
        table.repartition("bucket").sortWithinPartitions(COL_USER, COL_RANK).write.partitionBy("bucket").parquet(f"{tmp}/{TABLE}")
        fs.delete(spark, f"{tmp}/members")
        log.info("final: wrote the lists; checking them")

        written = spark.read.parquet(f"{tmp}/{TABLE}")
        per_user = written.groupBy(COL_USER).agg(F.count("*").alias("n"), F.countDistinct(COL_RANK).alias("ranks"))
        stats = per_user.agg(F.count("*"), F.min("n"), F.max("n"), F.sum((F.col("n") != F.col("ranks")).cast("int"))).first()
        seen = written.join(ratings.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM]).count()
        rows = written.agg(  # one pass over the written lists for the row checks
            F.count("*"),
            F.count_if(F.col("explanation").isNull() | (F.col("explanation") == "")),
            F.count_if(F.size("contributors") == 0),
            F.count_if(F.lower("explanation").contains("because you rated")),
        ).first()
        counts = {
            "fit": "production", "fit_rows": n_ratings, "method": method, "members": names, "chosen_by": why,
            "explainer": explainer, "popular_lately_days": days,
            "users": user_map.count(), "users_with_ratings": known.count(), "cold_start_users": cold_users.count(),
            "users_written": int(stats[0]), "rows": int(rows[0]),
            "rows_per_user": [int(stats[1] or 0), int(stats[2] or 0)], "users_with_a_repeated_rank": int(stats[3] or 0),
            "rows_without_explanation": int(rows[1]), "rows_without_contributors": int(rows[2]),
            "rows_with_a_rated_item": seen, "rows_with_neighbour_evidence": int(rows[3]),
        }  # fmt: skip
        if counts["users_written"] != counts["users"]:
            log.warning("final: %d of %d users have a list (users whose members recommend nothing are absent)",
                        counts["users_written"], counts["users"])  # fmt: skip
        if counts["rows_with_a_rated_item"] or counts["users_with_a_repeated_rank"]:
            raise RuntimeError(f"final: bad lists: {counts}")
        log.info(
            "final: %s(%s) refit on %d ratings; top-%d for %d users (%d cold start), %d rows, %d with a 'because you rated'",
            method, ", ".join(names), n_ratings, k, counts["users_written"], counts["cold_start_users"], counts["rows"],
            counts["rows_with_neighbour_evidence"],
        )  # fmt: skip
        for df in (ratings, items, known, lately):
            df.unpersist()
        return counts

    inputs = [layout.ingested(cfg), layout.blend(cfg)]
    extra = {"method": method, "members": names, "k": k, "params": {n: registry.model_params(n, models_dir) for n in names}}
    return run_stage(spark, cfg, "final", layout.final(cfg), STAGE.sections, inputs, body, force, extra)


def read_final(spark: SparkSession, cfg: Config) -> DataFrame:
    path = f"{layout.final(cfg)}/{TABLE}"
    if not fs.exists(spark, path):
        raise FileNotFoundError(f"{path} not found: run the final stage first (recsys-spark final, or the pipeline)")
    return spark.read.parquet(path)


def user_rows(spark: SparkSession, cfg: Config, raw_id: str, k: int | None = None) -> DataFrame:
    """One user's rows by raw id (reads the user's bucket only); an unknown id is a ``LookupError`` saying so."""
    path = f"{layout.final(cfg)}/{TABLE}"
    read_final(spark, cfg)  # the error when the table is missing
    user_map = layout.read_ingested(spark, cfg, "user_map")
    hit = user_map.where(F.col(COL_USER_ID) == str(raw_id)).select(COL_USER).first()  # one row
    if hit is None:
        sample = [r[0] for r in user_map.orderBy(COL_USER).select(COL_USER_ID).limit(3).collect()]
        raise LookupError(f"user {raw_id!r} is not in {layout.ingested(cfg, 'user_map')} "
                          f"({user_map.count()} users; ids look like {', '.join(map(repr, sample))})")  # fmt: skip
    idx = int(hit[0])
    bucket = idx % cfg.final.buckets
    rows = spark.read.parquet(f"{path}/bucket={bucket}").where(F.col(COL_USER) == idx)
    return rows.where(F.col(COL_RANK) <= k) if k else rows


STAGE = Stage(
    name="final", run=run_final,
    help="refit the chosen blend's members on every rating; write the explained top-N of every user (cold start included)",
    sections=("final",), inputs=lambda cfg, _m=None: [layout.ingested(cfg), layout.blend(cfg)],
    outputs=lambda cfg, _m=None: [layout.final(cfg)], instances=lambda cfg: [None] if cfg.final.enabled else [],
)  # fmt: skip
