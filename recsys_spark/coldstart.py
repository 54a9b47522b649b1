"""Cold-start evaluation protocols (``recsys-spark benchmark coldstart``).

Two experiments on the full ingested ratings, both seeded and deterministic:

* **cold items**: among items with at least ``min_item_ratings`` ratings, a
  hash-chosen ``fraction`` become *new*: every rating of theirs is held out,
  so training has never seen them (their features may come only from side
  data: genres, year, tags -- popularity and recency are computed from
  training ratings and are therefore empty for them).  Scored: every held-out
  rating (RMSE/MAE, fallbacks counted), and for every user with a held-out
  rating a top-``k`` list over the new items only (relevant: the new items
  the user rated).
* **cold users**: among users with at least ``min_user_ratings`` ratings, a
  hash-chosen ``fraction`` become *new*: only their first ``keep`` ratings
  (by timestamp, ties by item) stay in training, the rest is held out.
  Scored: the held-out ratings, and a top-``k`` list over the usual candidates
  (training items the user has not rated; relevant: the held-out items).

A model ranks new items with its own top-N scorer where it has one for
candidates outside training (content: profile similarity, via
``recommend(users, k, items=...)``); other models rank the candidates by their
predicted rating (for them every new item falls back to the same baseline, so
their order among new items is arbitrary: ties broken by a seeded hash).
:func:`check_no_leakage` asserts that no held-out rating is in training.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import metrics as M
from recsys_spark import registry, stages
from recsys_spark.config import Config
from recsys_spark.evaluate import rating_report, topn_report
from recsys_spark.recommender import RecommenderModel, as_topn
from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RANK,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER,
)
from recsys_spark.split import hash_uniform

log = logging.getLogger(__name__)

PROTOCOL = {"fraction": 0.1, "min_item_ratings": 5, "min_user_ratings": 10, "keep": 3, "seed": 42}


def cold_item_split(ratings: DataFrame, fraction: float = 0.1, min_ratings: int = 5, seed: int = 42) -> tuple[DataFrame, DataFrame, DataFrame]:
    """``(train, test, cold_items)``: every rating of the chosen items is in ``test``."""
    n = ratings.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    cold = n.where((F.col("_n") >= min_ratings) & (hash_uniform(seed, F.lit("cold-item"), COL_ITEM) < fraction)).select(COL_ITEM)
    flagged = ratings.join(cold.withColumn("_cold", F.lit(True)), COL_ITEM, "left")
    test = flagged.where(F.col("_cold").isNotNull()).drop("_cold")
    train = flagged.where(F.col("_cold").isNull()).drop("_cold")
    return train, test, cold


def cold_user_split(ratings: DataFrame, fraction: float = 0.1, keep: int = 3, min_ratings: int = 10, seed: int = 42) -> tuple[DataFrame, DataFrame, DataFrame]:
    """``(train, test, cold_users)``: a chosen user keeps only their first ``keep`` ratings in ``train``."""
    n = ratings.groupBy(COL_USER).agg(F.count("*").alias("_n"))
    cold = n.where((F.col("_n") >= min_ratings) & (hash_uniform(seed, F.lit("cold-user"), COL_USER) < fraction)).select(COL_USER)
    order = [F.col(COL_TIMESTAMP).asc_nulls_last(), F.col(COL_ITEM)] if COL_TIMESTAMP in ratings.columns else [F.col(COL_ITEM)]
    w = Window.partitionBy(COL_USER).orderBy(*order)
    flagged = ratings.join(cold.withColumn("_cold", F.lit(True)), COL_USER, "left").withColumn("_r", F.row_number().over(w))
    held = F.col("_cold").isNotNull() & (F.col("_r") > keep)
    return flagged.where(~held).drop("_cold", "_r"), flagged.where(held).drop("_cold", "_r"), cold


def check_no_leakage(train: DataFrame, test: DataFrame) -> None:
    """Fail when a held-out (user, item) rating is also in training."""
    both = train.select(COL_USER, COL_ITEM).join(test.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM]).count()
    if both:
        raise RuntimeError(f"cold-start split leaks: {both} held-out (user, item) pairs are in training")


def rank_new_items(model: RecommenderModel, users: DataFrame, new_items: DataFrame, k: int, seed: int = 42) -> DataFrame:
    """Top-``k`` of ``new_items`` per user: the model's own scorer when it ranks unseen items, else by predicted rating.

    Ties in predicted rating (every new item gets the same fallback from a
    model that never saw it) are broken by a seeded hash of (user, item), not
    by ``item_idx``: ids often follow release or popularity order (ML-100K's
    do), which would hand such a model a popularity signal it does not have.
    """
    if model.ranks_new_items:
        return model.recommend(users, k, items=new_items)  # type: ignore[call-arg]
    pairs = users.select(COL_USER).distinct().crossJoin(new_items.select(COL_ITEM).distinct())
    scored = model.predict(pairs).select(COL_USER, COL_ITEM, F.col(COL_PREDICTION).alias(COL_SCORE))
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), hash_uniform(seed, F.lit("tie"), COL_USER, COL_ITEM), F.asc(COL_ITEM))
    return as_topn(scored.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), model.name)


def _evaluate(
    spark: SparkSession, cfg: Config, kind: str, models: list[str], train: DataFrame, test: DataFrame, cold: DataFrame,
    items: DataFrame, k: int,
) -> dict[str, Any]:  # fmt: skip
    check_no_leakage(train, test)
    scale = stages.rating_scale(spark, cfg)
    side = stages.side_data(spark, cfg)
    users = test.select(COL_USER).distinct().persist()
    counts = {"train": train.count(), "test": test.count(), "test_users": users.count(), f"cold_{kind}": cold.count()}
    n_catalog = counts["cold_items"] if kind == "items" else items.count()
    out: dict[str, Any] = {"counts": counts, "models": {}}
    paired: dict[str, Any] = {}  # model -> per-user metrics (pandas, by user): one row per test user
    for name in models:
        est = registry.build(name, scale, models_dir=stages.models_dir_of(cfg), side=side if registry.uses_side(name) else None)
        t = time.perf_counter()
        model = est.fit(train)
        fit_s = time.perf_counter() - t
        pred = model.predict(test.select(*[c for c in (COL_USER, COL_ITEM, COL_TIMESTAMP) if c in test.columns])).persist()
        rep = rating_report(pred, test, primary_is_fallback=name == "global_mean")
        top = (rank_new_items(model, users, cold, k) if kind == "items" else model.recommend(users, k)).persist()
        per_user: list[DataFrame] = []
        rep.update(topn_report(top, test, train, items, n_catalog, k, per_user=per_user, name=name))
        paired[name] = per_user[0].select(COL_USER, *_paired_metrics(k)).toPandas().set_index(COL_USER).sort_index()
        rep["fit_s"] = round(fit_s, 3)
        rep["total_s"] = round(time.perf_counter() - t, 3)
        log.info("cold %s, %s: rmse %.4f ndcg@%d %.4f precision@%d %.4f", kind, name, rep["rmse"], k, rep[f"ndcg@{k}"], k, rep[f"precision@{k}"])
        out["models"][name] = rep
        pred.unpersist()
        top.unpersist()
    users.unpersist()
    out["paired"] = paired_differences(paired, k)
    return out


def _paired_metrics(k: int) -> list[str]:
    return [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"hr@{k}"]


def paired_differences(per_user: dict[str, Any], k: int, n_boot: int = 2000, seed: int = 42) -> dict[str, Any]:
    """The first model against each other one, per ranking metric: mean per-user difference and bootstrap 95% interval.

    ``per_user``: model -> pandas frame indexed by user (every test user of the
    experiment, the same users for every model).  Keys: ``"first - other"``.
    """
    names = list(per_user)
    out: dict[str, Any] = {}
    if len(names) < 2:
        return out
    first = per_user[names[0]]
    for other in names[1:]:
        b = per_user[other]
        if not first.index.equals(b.index):
            raise ValueError(f"paired comparison {names[0]} - {other}: the per-user tables cover different users")
        res = {m: M.paired_bootstrap(first[m].to_numpy(), b[m].to_numpy(), n_boot, seed) for m in _paired_metrics(k)}
        out[f"{names[0]} - {other}"] = res
        d = res[f"ndcg@{k}"]
        log.info("%s - %s: ndcg@%d %+.4f (95%% CI %+.4f..%+.4f, %d users)", names[0], other, k, d["diff"], d["ci95_lo"], d["ci95_hi"], d["users"])
    return out


def run_coldstart(spark: SparkSession, cfg: Config, models: list[str], k: int = 10, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    p = {**PROTOCOL, **(protocol or {})}
    stages.run_ingest(spark, cfg)
    ratings = stages.read_ingested(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    items = stages.read_ingested(spark, cfg, "items").persist()
    result: dict[str, Any] = {"protocol": {"name": "coldstart", "dataset": cfg.dataset_name, "k": k, **p}, "experiments": {}}
    tr, te, cold = cold_item_split(ratings, p["fraction"], p["min_item_ratings"], p["seed"])
    tr, te, cold = tr.persist(), te.persist(), cold.persist()
    result["experiments"]["items"] = _evaluate(spark, cfg, "items", models, tr, te, cold, items, k)
    for df in (tr, te, cold):
        df.unpersist()
    tr, te, cold = cold_user_split(ratings, p["fraction"], p["keep"], p["min_user_ratings"], p["seed"])
    tr, te, cold = tr.persist(), te.persist(), cold.persist()
    result["experiments"]["users"] = _evaluate(spark, cfg, "users", models, tr, te, cold, items, k)
    for df in (tr, te, cold, ratings, items):
        df.unpersist()
    return result


def summary_table(result: dict[str, Any]) -> str:
    k = result["protocol"]["k"]
    cols = ["rmse", "mae", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"hr@{k}", "coverage"]
    lines = ["| experiment | model | " + " | ".join(cols) + " | fallback rows |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for kind, exp in result["experiments"].items():
        for name, m in exp["models"].items():
            lines.append(f"| cold {kind} | {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {m['fallback_rows']} |")
    paired = [(kind, pair, d) for kind, exp in result["experiments"].items() for pair, d in exp.get("paired", {}).items()]
    if paired:
        ms = _paired_metrics(k)
        lines += ["", "| experiment | paired, per user | " + " | ".join(f"{m} (95% CI)" for m in ms) + " |", "|---|---|" + "---|" * len(ms)]
        for kind, pair, d in paired:
            cells = [f"{d[m]['diff']:+.4f} ({d[m]['ci95_lo']:+.4f}..{d[m]['ci95_hi']:+.4f})" for m in ms]
            lines.append(f"| cold {kind} | {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
