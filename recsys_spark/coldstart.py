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
  With ``slices = S > 1`` the experiment runs ``S`` times on disjoint user
  slices (hash in ``[s f, (s + 1) f)``; slice 0 is the single run's users),
  each with every other user warm, and pools them: ``S`` times the users
  for the paired comparison, so its intervals narrow by about ``sqrt(S)``.

A model ranks new items with its own top-N scorer where it has one for
candidates outside training (content: profile similarity, via
``recommend(users, k, items=...)``); other models rank the candidates by their
predicted rating (for them every new item falls back to the same baseline, so
their order among new items is arbitrary: ties broken by a seeded hash).
:func:`check_no_leakage` asserts that no held-out rating is in training.
"""

from __future__ import annotations

import logging
import math
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

PROTOCOL = {"fraction": 0.1, "min_item_ratings": 5, "min_user_ratings": 10, "keep": 3, "seed": 42, "slices": 1}


def cold_item_split(
    ratings: DataFrame, fraction: float = 0.1, min_ratings: int = 5, seed: int = 42
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """``(train, test, cold_items)``: every rating of the chosen items is in ``test``."""
    n = ratings.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    cold = n.where((F.col("_n") >= min_ratings) & (hash_uniform(seed, F.lit("cold-item"), COL_ITEM) < fraction)).select(COL_ITEM)
    flagged = ratings.join(cold.withColumn("_cold", F.lit(True)), COL_ITEM, "left")
    test = flagged.where(F.col("_cold").isNotNull()).drop("_cold")
    train = flagged.where(F.col("_cold").isNull()).drop("_cold")
    return train, test, cold


def cold_user_split(
    ratings: DataFrame, fraction: float = 0.1, keep: int = 3, min_ratings: int = 10, seed: int = 42, slice_index: int = 0,
) -> tuple[DataFrame, DataFrame, DataFrame]:  # fmt: skip
    """``(train, test, cold_users)``: a chosen user keeps only their first ``keep`` ratings in ``train``.

    Chosen: users with at least ``min_ratings`` ratings whose seeded hash lies in
    ``[slice_index * fraction, (slice_index + 1) * fraction)``, so distinct
    ``slice_index`` values pick disjoint users.  "First" is by timestamp; ratings
    with the same timestamp are ordered by a seeded hash of (user, item).
    """
    if slice_index < 0 or (slice_index + 1) * fraction > 1 + 1e-9:
        raise ValueError(f"cold-user slice {slice_index} of fraction {fraction} lies outside [0, 1]")
    n = ratings.groupBy(COL_USER).agg(F.count("*").alias("_n"))
    h = hash_uniform(seed, F.lit("cold-user"), COL_USER)
    lo, hi = slice_index * fraction, (slice_index + 1) * fraction
    cold = n.where((F.col("_n") >= min_ratings) & (h >= lo) & (h < hi)).select(COL_USER)
    # Ties in time (39% of ML-100K users have the same timestamp on their 3rd and 4th rating) are broken by a
    # seeded hash, not by item id: ids often follow popularity (ML-100K's do), and an id tie-break would keep
    # each new user's most popular items in training and hold out their rarer ones.
    tie = hash_uniform(seed, F.lit("cold-user-tie"), COL_USER, COL_ITEM)
    order = [F.col(COL_TIMESTAMP).asc_nulls_last(), tie, F.col(COL_ITEM)] if COL_TIMESTAMP in ratings.columns else [tie, F.col(COL_ITEM)]
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
        est = registry.build(name, scale, models_dir=stages.models_dir_of(cfg))
        t = time.perf_counter()
        model = est.fit_with(train, side)
        fit_s = time.perf_counter() - t
        pred = model.predict(test.select(*[c for c in (COL_USER, COL_ITEM, COL_TIMESTAMP) if c in test.columns])).persist()
        rep = rating_report(pred, test, primary_is_fallback=name == "global_mean")
        top = (rank_new_items(model, users, cold, k) if kind == "items" else model.recommend(users, k)).persist()
        per_user: list[DataFrame] = []
        rep.update(topn_report(top, test, train, items, n_catalog, k, per_user=per_user, name=name))
        paired[name] = per_user[0].select(COL_USER, *_paired_metrics(k)).toPandas().set_index(COL_USER).sort_index()
        rep["fit_s"] = round(fit_s, 3)
        rep["total_s"] = round(time.perf_counter() - t, 3)
        log.info(
            "cold %s, %s: rmse %.4f ndcg@%d %.4f precision@%d %.4f", kind, name, rep["rmse"], k, rep[f"ndcg@{k}"], k, rep[f"precision@{k}"]
        )
        out["models"][name] = rep
        pred.unpersist()
        top.unpersist()
    users.unpersist()
    out["paired"] = paired_differences(paired, k)
    out["per_user"] = paired  # for pooling slices; run_coldstart drops it before writing
    return out


def pool_slices(slices: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """One experiment from several runs on disjoint user slices.

    Per model: RMSE / MAE over every held-out rating of every slice (each
    slice's weighted by its rows), the per-user ranking metrics averaged over
    every slice's users, and the paired comparison over all those users.
    Catalogue-level figures (coverage, novelty, diversity) and each slice's
    own paired comparison stay per slice (``slices``).
    """
    import pandas as pd

    names = list(slices[0]["models"])
    per_user = {n: pd.concat([s["per_user"][n] for s in slices]).sort_index() for n in names}
    models: dict[str, Any] = {}
    for name in names:
        reps = [s["models"][name] for s in slices]
        rows = sum(r["rows"] for r in reps)
        users = per_user[name]
        if users.index.has_duplicates:
            raise ValueError(f"pooled cold-user slices overlap: {int(users.index.duplicated().sum())} users are in two slices")
        models[name] = {
            "rmse": math.sqrt(sum(r["rows"] * r["rmse"] ** 2 for r in reps) / rows),
            "mae": sum(r["rows"] * r["mae"] for r in reps) / rows,
            "rows": rows,
            "fallback_rows": sum(r["fallback_rows"] for r in reps),
            "users": len(users),
            **{m: float(users[m].mean()) for m in _paired_metrics(k)},
            "fit_s": round(sum(r["fit_s"] for r in reps), 3),
            "total_s": round(sum(r["total_s"] for r in reps), 3),
        }
    counts = {key: sum(s["counts"][key] for s in slices) for key in ("test", "test_users", "cold_users")}
    return {
        "counts": {**counts, "slices": len(slices)},
        "models": models,
        "paired": paired_differences(per_user, k),
        "slices": [{"counts": s["counts"], "models": s["models"], **({"paired": s["paired"]} if "paired" in s else {})} for s in slices],
        "per_user": per_user,
    }


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
        log.info(
            "%s - %s: ndcg@%d %+.4f (95%% CI %+.4f..%+.4f, %d users)", names[0], other, k, d["diff"], d["ci95_lo"], d["ci95_hi"], d["users"]
        )
    return out


def run_coldstart(
    spark: SparkSession, cfg: Config, models: list[str], k: int = 10, protocol: dict[str, Any] | None = None,
    keep_per_user: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Both experiments; with ``keep_per_user``, each keeps ``per_user`` (model -> pandas frame of
    per-user ranking metrics, by user) for paired tests across runs."""
    p = {**PROTOCOL, **(protocol or {})}
    if int(p["slices"]) < 1 or int(p["slices"]) * p["fraction"] > 1 + 1e-9:
        raise ValueError(f"coldstart: {p['slices']} slices of fraction {p['fraction']} need slices >= 1 and slices * fraction <= 1")
    stages.run_ingest(spark, cfg)
    ratings = stages.read_ingested(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    items = stages.read_ingested(spark, cfg, "items").persist()
    result: dict[str, Any] = {"protocol": {"name": "coldstart", "dataset": cfg.dataset_name, "k": k, **p}, "experiments": {}}
    tr, te, cold = cold_item_split(ratings, p["fraction"], p["min_item_ratings"], p["seed"])
    tr, te, cold = tr.persist(), te.persist(), cold.persist()
    result["experiments"]["items"] = _evaluate(spark, cfg, "items", models, tr, te, cold, items, k)
    for df in (tr, te, cold):
        df.unpersist()
    runs = []
    for s in range(int(p["slices"])):
        if p["slices"] > 1:
            log.info("cold users: slice %d of %d", s + 1, p["slices"])
        tr, te, cold = cold_user_split(ratings, p["fraction"], p["keep"], p["min_user_ratings"], p["seed"], slice_index=s)
        tr, te, cold = tr.persist(), te.persist(), cold.persist()
        runs.append(_evaluate(spark, cfg, "users", models, tr, te, cold, items, k))
        for df in (tr, te, cold):
            df.unpersist()
    result["experiments"]["users"] = runs[0] if len(runs) == 1 else pool_slices(runs, k)
    for df in (ratings, items):
        df.unpersist()
    if not keep_per_user:
        for exp in result["experiments"].values():
            exp.pop("per_user", None)
    return result


def summary_table(result: dict[str, Any]) -> str:
    k = result["protocol"]["k"]
    cols = ["rmse", "mae", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"hr@{k}", "coverage"]
    lines = ["| experiment | model | " + " | ".join(cols) + " | fallback rows |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for kind, exp in result["experiments"].items():
        for name, m in exp["models"].items():
            lines.append(
                f"| cold {kind} | {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + f" | {m['fallback_rows']} |"
            )
    paired = [(kind, pair, d) for kind, exp in result["experiments"].items() for pair, d in exp.get("paired", {}).items()]
    if paired:
        ms = _paired_metrics(k)
        lines += ["", "| experiment | paired, per user | " + " | ".join(f"{m} (95% CI)" for m in ms) + " |", "|---|---|" + "---|" * len(ms)]
        for kind, pair, d in paired:
            cells = [f"{d[m]['diff']:+.4f} ({d[m]['ci95_lo']:+.4f}..{d[m]['ci95_hi']:+.4f})" for m in ms]
            lines.append(f"| cold {kind} | {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
