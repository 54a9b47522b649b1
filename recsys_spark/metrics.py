"""Evaluation metrics, computed in Spark (nothing proportional to the data is collected).

Rating metrics (:func:`rating_metrics`), over every test row:

* RMSE = sqrt(mean((r - p)^2)), MAE = mean(|r - p|).  Every test row must
  have a prediction: a missing one raises (models fall back instead of
  dropping); the number of rows each ``source`` answered is reported.

Ranking metrics (:func:`ranking_metrics`) at cut-off ``k``.  For user ``u``:
``L`` = the first ``k`` recommendations by rank (fewer when the model
returned fewer), ``R`` = the relevant items (every test item of ``u``, or
those with rating >= ``relevance_threshold``).  Users with an empty ``R`` are
not evaluated; a user with relevant items but no recommendations scores 0
everywhere.  Ranks are the model's (ties already broken by the model).

* precision@k = |L ∩ R| / k  (the denominator is k even when |L| < k)
* recall@k    = |L ∩ R| / |R|
* ndcg@k      = DCG / IDCG, DCG = sum over hits at rank i of 1/log2(i+1),
  IDCG = sum_{i=1}^{min(k, |R|)} 1/log2(i+1)            (binary relevance)
* ndcg_graded@k: gains ``2^rel - 1`` with ``rel`` the test rating; IDCG from
  the user's test ratings sorted descending
* map@k       = sum over hits at rank i of (hits up to i)/i, divided by min(k, |R|)
* map         = the same sum over the full list given, divided by |R|
* hr@k        = 1 if |L ∩ R| > 0 else 0
* mrr@k       = 1 / (rank of the first hit), 0 when there is none

All are means over evaluated users; per-user values come back too.

Beyond accuracy (over the recommendation lists, all users that got one):

* coverage  = distinct recommended items / catalogue size
* novelty   = mean over recommended (user, item) of ``-log2(p_i)``, with
  ``p_i = (users who rated i in training + 1) / (n_users + 1)``
* diversity = mean over users of the mean pairwise distance ``1 - cos`` of
  the items' feature sets (cosine of binary vectors: |A∩B| / sqrt(|A||B|),
  0 when either set is empty); lists with fewer than 2 items are skipped.
  Where items have no features (a generic table without an items file),
  :func:`cooccurrence_diversity` uses the items' sets of training users
  instead (the same cosine over who rated them), and the report says which.
* gini      = Gini index of how often each catalogue item is recommended
  (never-recommended items count as 0): 0 when every item is recommended
  equally often, towards 1 when a few items fill every list
* avg_popularity = mean over recommended (user, item) of the item's number
  of training ratings (average recommendation popularity)
* serendipity@k = |{i in L : i in R, i not in P}| / k averaged over the
  evaluated users, with ``P`` the ``k`` most rated training items (what a
  popularity recommender shows everyone): relevant and unexpected

Comparing two models on the same users (:func:`paired_bootstrap`): the mean
per-user difference and a seeded percentile bootstrap 95% interval over
users (resampling users, both models' values together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SOURCE,
    COL_USER,
    require_columns,
)


class MetricError(ValueError):
    pass


def rating_metrics(predictions: DataFrame, truth: DataFrame) -> dict:
    """RMSE, MAE over every row of ``truth``; raises when a test row has no prediction."""
    require_columns(predictions, [COL_USER, COL_ITEM, COL_PREDICTION], "predictions")
    require_columns(truth, [COL_USER, COL_ITEM, COL_RATING], "test data")
    extra = [COL_SOURCE] if COL_SOURCE in predictions.columns else []
    pred = predictions.select(COL_USER, COL_ITEM, COL_PREDICTION, *extra)
    joined = truth.select(COL_USER, COL_ITEM, COL_RATING).join(pred, [COL_USER, COL_ITEM], "left")
    err = F.col(COL_RATING) - F.col(COL_PREDICTION)
    # one pass: sums per answering source (a handful of rows), combined here
    keys = [COL_SOURCE] if extra else []
    groups = joined.groupBy(*keys).agg(
        F.count("*").alias("n"),
        F.count(COL_PREDICTION).alias("scored"),
        F.sum(err * err).alias("sse"),
        F.sum(F.abs(err)).alias("sae"),
    ).collect()
    n = sum(g["n"] for g in groups)
    scored = sum(g["scored"] for g in groups)
    if n != scored:
        raise MetricError(f"{n - scored} of {n} test rows have no prediction")
    sse = sum(g["sse"] or 0.0 for g in groups)
    sae = sum(g["sae"] or 0.0 for g in groups)
    out = {"rmse": math.sqrt(sse / n) if n else None, "mae": sae / n if n else None, "n": n}
    if extra:
        out["sources"] = {g[COL_SOURCE]: g["n"] for g in groups}
    return out


@dataclass
class RankingResult:
    metrics: dict[str, float]
    per_user: DataFrame  # user_idx and one column per metric


def _dcg_ideal(n: F.Column) -> F.Column:
    return F.aggregate(
        F.sequence(F.lit(1), F.greatest(n, F.lit(1))),
        F.lit(0.0),
        lambda acc, i: acc + F.when(i <= n, 1.0 / F.log2(i + 1)).otherwise(0.0),
    )


def ranking_metrics(
    topn: DataFrame, truth: DataFrame, k: int = 10, relevance_threshold: float | None = None
) -> RankingResult:
    """Precision/Recall/NDCG/MAP/HR/MRR at ``k`` (see module docstring), means and per user."""
    require_columns(topn, [COL_USER, COL_ITEM, COL_RANK], "recommendations")
    require_columns(truth, [COL_USER, COL_ITEM], "test data")
    rel = truth
    if relevance_threshold is not None:
        rel = rel.where(F.col(COL_RATING) >= relevance_threshold)
    graded = COL_RATING in rel.columns
    rel = rel.select(COL_USER, COL_ITEM, *([COL_RATING] if graded else [])).dropDuplicates([COL_USER, COL_ITEM])
    # per user: |R| and the ideal graded DCG (gains sorted descending)
    gain = (F.pow(F.lit(2.0), F.col(COL_RATING)) - 1) if graded else F.lit(1.0)
    w_ideal = Window.partitionBy(COL_USER).orderBy(F.desc("_gain"), F.asc(COL_ITEM))
    ideal = (
        rel.withColumn("_gain", gain)
        .withColumn("_pos", F.row_number().over(w_ideal))
        .groupBy(COL_USER)
        .agg(
            F.count("*").alias("n_rel"),
            F.sum(F.when(F.col("_pos") <= k, F.col("_gain") / F.log2(F.col("_pos") + 1)).otherwise(0.0)).alias("_idcg_g"),
        )
    )
    recs = topn.select(COL_USER, COL_ITEM, COL_RANK)
    hits = recs.join(rel.withColumn("_gain", gain), [COL_USER, COL_ITEM])
    w = Window.partitionBy(COL_USER).orderBy(COL_RANK)
    hits = hits.withColumn("_h", F.row_number().over(w))  # hits so far, at this rank
    in_k = F.col(COL_RANK) <= k
    per_hit = hits.groupBy(COL_USER).agg(
        F.sum(F.when(in_k, 1).otherwise(0)).alias("_hits"),
        F.sum(F.when(in_k, 1.0 / F.log2(F.col(COL_RANK) + 1)).otherwise(0.0)).alias("_dcg"),
        F.sum(F.when(in_k, F.col("_gain") / F.log2(F.col(COL_RANK) + 1)).otherwise(0.0)).alias("_dcg_g"),
        F.sum(F.when(in_k, F.col("_h") / F.col(COL_RANK)).otherwise(0.0)).alias("_ap_k"),
        F.sum(F.col("_h") / F.col(COL_RANK)).alias("_ap"),
        F.min(F.when(in_k, F.col(COL_RANK))).alias("_first"),
    )
    u = ideal.join(per_hit, COL_USER, "left").fillna(0, ["_hits", "_dcg", "_dcg_g", "_ap_k", "_ap"])
    n_rel = F.col("n_rel")
    per_user = u.select(
        COL_USER,
        (F.col("_hits") / k).alias(f"precision@{k}"),
        (F.col("_hits") / n_rel).alias(f"recall@{k}"),
        (F.col("_dcg") / _dcg_ideal(F.least(n_rel, F.lit(k)))).alias(f"ndcg@{k}"),
        F.when(F.col("_idcg_g") > 0, F.col("_dcg_g") / F.col("_idcg_g")).otherwise(0.0).alias(f"ndcg_graded@{k}"),
        (F.col("_ap_k") / F.least(n_rel, F.lit(k))).alias(f"map@{k}"),
        (F.col("_ap") / n_rel).alias("map"),
        F.when(F.col("_hits") > 0, 1.0).otherwise(0.0).alias(f"hr@{k}"),
        F.coalesce(1.0 / F.col("_first"), F.lit(0.0)).alias(f"mrr@{k}"),
    )
    names = [c for c in per_user.columns if c != COL_USER]
    row = per_user.agg(F.count("*").alias("users"), *[F.avg(c).alias(c) for c in names]).first()  # scalars
    metrics = {c: (row[c] if row[c] is not None else 0.0) for c in names}
    metrics["users"] = row["users"]
    return RankingResult(metrics, per_user)


def coverage(topn: DataFrame, n_catalog: int) -> float:
    if n_catalog <= 0:
        raise MetricError("catalogue size must be positive")
    n = topn.select(COL_ITEM).distinct().count()
    return n / n_catalog


def novelty(topn: DataFrame, train: DataFrame) -> float:
    n_users = train.select(COL_USER).distinct().count()
    pop = train.groupBy(COL_ITEM).agg(F.countDistinct(COL_USER).alias("_c"))
    joined = topn.select(COL_ITEM).join(pop, COL_ITEM, "left").fillna(0, ["_c"])
    v = joined.agg(F.avg(-F.log2((F.col("_c") + 1) / (n_users + 1)))).first()[0]
    return float(v) if v is not None else 0.0


def diversity(topn: DataFrame, item_features: DataFrame, features_col: str = "genres") -> float:
    """Intra-list diversity: mean over users of the mean pairwise ``1 - cos`` of feature sets."""
    require_columns(item_features, [COL_ITEM, features_col], "item features")
    feats = item_features.select(COL_ITEM, F.array_distinct(F.col(features_col)).alias("_f"))
    lst = topn.select(COL_USER, COL_RANK, COL_ITEM).join(feats, COL_ITEM, "left")
    a, b = lst.alias("a"), lst.alias("b")
    pairs = a.join(b, (F.col("a." + COL_USER) == F.col("b." + COL_USER)) & (F.col("a." + COL_RANK) < F.col("b." + COL_RANK)))
    fa, fb = F.coalesce(F.col("a._f"), F.array()), F.coalesce(F.col("b._f"), F.array())
    inter = F.size(F.array_intersect(fa, fb))
    denom = F.sqrt(F.size(fa) * F.size(fb))
    cos = F.when(denom > 0, inter / denom).otherwise(0.0)
    per_user = pairs.groupBy(F.col("a." + COL_USER).alias(COL_USER)).agg(F.avg(1 - cos).alias("_d"))
    v = per_user.agg(F.avg("_d")).first()[0]
    return float(v) if v is not None else 0.0


def gini_index(counts: np.ndarray, n_catalog: int) -> float:
    """Gini of ``counts`` padded with zeros to ``n_catalog`` entries (items never recommended)."""
    counts = np.asarray(counts, dtype=np.float64)
    if n_catalog < len(counts) or n_catalog <= 0:
        raise MetricError(f"catalogue size {n_catalog} is smaller than the {len(counts)} recommended items")
    x = np.sort(np.concatenate([counts, np.zeros(n_catalog - len(counts))]))
    total = x.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, n_catalog + 1)
    return float(((2 * i - n_catalog - 1) * x).sum() / (n_catalog * total))


def popularity_stats(topn: DataFrame, train: DataFrame, n_catalog: int) -> dict[str, float]:
    """``gini`` of the recommendation counts and ``avg_popularity`` of the recommended items (one small collect)."""
    pop = train.groupBy(COL_ITEM).agg(F.count("*").alias("_pop"))
    per_item = topn.groupBy(COL_ITEM).agg(F.count("*").alias("_n")).join(pop, COL_ITEM, "left").fillna(0, ["_pop"])
    pdf = per_item.select("_n", "_pop").toPandas()  # one row per recommended item: at most the catalogue
    if pdf.empty:
        return {"gini": 0.0, "avg_popularity": 0.0}
    n = pdf["_n"].to_numpy(dtype=np.float64)
    return {"gini": gini_index(n, n_catalog), "avg_popularity": float((n * pdf["_pop"].to_numpy()).sum() / n.sum())}


def serendipity(topn: DataFrame, relevant: DataFrame, train: DataFrame, k: int, n_users: int) -> float:
    """Relevant recommendations outside the ``k`` most rated training items, per ``k``, averaged over ``n_users``."""
    if n_users <= 0:
        return 0.0
    popular = train.groupBy(COL_ITEM).agg(F.count("*").alias("_c")).orderBy(F.desc("_c"), COL_ITEM).limit(k).select(COL_ITEM)
    recs = topn.where(F.col(COL_RANK) <= k).select(COL_USER, COL_ITEM).join(F.broadcast(popular), COL_ITEM, "left_anti")
    hits = recs.join(relevant.select(COL_USER, COL_ITEM).dropDuplicates(), [COL_USER, COL_ITEM]).count()
    return hits / (k * n_users)


def cooccurrence_diversity(topn: DataFrame, train: DataFrame) -> float:
    """Intra-list diversity with the cosine of the items' training-user sets as the similarity."""
    lst = topn.select(COL_USER, COL_RANK, COL_ITEM)
    a, b = lst.alias("a"), lst.alias("b")
    pairs = a.join(b, (F.col("a." + COL_USER) == F.col("b." + COL_USER)) & (F.col("a." + COL_RANK) < F.col("b." + COL_RANK))).select(
        F.col("a." + COL_USER).alias(COL_USER), F.col("a." + COL_ITEM).alias("_ia"), F.col("b." + COL_ITEM).alias("_ib")
    )
    listed = lst.select(COL_ITEM).distinct()
    sets = train.join(listed, COL_ITEM, "left_semi").groupBy(COL_ITEM).agg(F.collect_set(COL_USER).alias("_u"))
    sa = sets.select(F.col(COL_ITEM).alias("_ia"), F.col("_u").alias("_ua"))
    sb = sets.select(F.col(COL_ITEM).alias("_ib"), F.col("_u").alias("_ub"))
    sims = pairs.select("_ia", "_ib").distinct().join(sa, "_ia", "left").join(sb, "_ib", "left")
    ua, ub = F.coalesce(F.col("_ua"), F.array()), F.coalesce(F.col("_ub"), F.array())
    denom = F.sqrt(F.size(ua) * F.size(ub))
    sims = sims.select("_ia", "_ib", F.when(denom > 0, F.size(F.array_intersect(ua, ub)) / denom).otherwise(0.0).alias("_cos"))
    per_user = pairs.join(sims, ["_ia", "_ib"]).groupBy(COL_USER).agg(F.avg(1 - F.col("_cos")).alias("_d"))
    v = per_user.agg(F.avg("_d")).first()[0]
    return float(v) if v is not None else 0.0


def has_features(item_features: DataFrame, features_col: str = "genres") -> bool:
    """Whether any item has a non-empty ``features_col`` (else feature diversity is 1.0 for every list)."""
    if features_col not in item_features.columns:
        return False
    return bool(item_features.where(F.size(F.coalesce(F.col(features_col), F.array())) > 0).limit(1).count())


def _resamples(n_boot: int, n: int, seed: int, max_cells: int = 4_000_000):
    """The ``n_boot`` index resamples of ``n`` units in chunks of at most ``max_cells`` indices
    (the same draws as one ``(n_boot, n)`` call: the generator fills row after row)."""
    rng = np.random.default_rng(seed)
    step = max(1, max_cells // max(n, 1))
    for start in range(0, n_boot, step):
        yield rng.integers(0, n, size=(min(step, n_boot - start), n))


def paired_rmse_bootstrap(
    users: np.ndarray, err_a: np.ndarray, err_b: np.ndarray, n_boot: int = 2000, seed: int = 42,
) -> dict[str, float]:  # fmt: skip
    """``RMSE(b) - RMSE(a)`` over rows grouped by user, with a percentile bootstrap 95% interval over users.

    ``err_a[i]`` and ``err_b[i]`` are two models' errors on the same row of user
    ``users[i]``.  Users (with all their rows) are resampled with replacement
    ``n_boot`` times (seeded); positive means ``a`` has the lower RMSE.
    """
    users = np.asarray(users)
    err_a, err_b = np.asarray(err_a, dtype=np.float64), np.asarray(err_b, dtype=np.float64)
    if not (users.shape == err_a.shape == err_b.shape) or len(users) == 0:
        raise MetricError(f"paired_rmse_bootstrap needs equal-length, non-empty arrays, got {users.shape}, {err_a.shape}, {err_b.shape}")
    _, inv = np.unique(users, return_inverse=True)
    n_u = int(inv.max()) + 1
    sa, sb, n = (np.bincount(inv, w, n_u) for w in (err_a**2, err_b**2, np.ones(len(inv))))
    diffs = []
    for idx in _resamples(n_boot, n_u, seed):
        ra, rb = np.sqrt(sa[idx].sum(1) / n[idx].sum(1)), np.sqrt(sb[idx].sum(1) / n[idx].sum(1))
        diffs.append(rb - ra)
    lo, hi = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    diff = float(np.sqrt(sb.sum() / n.sum()) - np.sqrt(sa.sum() / n.sum()))
    return {"diff": diff, "ci95_lo": float(lo), "ci95_hi": float(hi), "users": n_u, "rows": int(len(users))}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 42) -> dict[str, float]:
    """``mean(a - b)`` over paired per-user values, with a percentile bootstrap 95% interval.

    ``a[i]`` and ``b[i]`` belong to the same user.  Users are resampled with
    replacement ``n_boot`` times (seeded); the interval is the 2.5th and 97.5th
    percentile of the resampled mean differences.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise MetricError(f"paired_bootstrap needs two equal-length, non-empty 1-d arrays, got {a.shape} and {b.shape}")
    d = a - b
    means = np.concatenate([d[idx].mean(axis=1) for idx in _resamples(n_boot, len(d), seed)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95_lo": float(lo), "ci95_hi": float(hi), "users": int(len(d))}


def auc_logloss(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """ROC AUC (ties count one half: the Mann-Whitney statistic) and log loss of ``sigmoid(logits)``.

    ``labels`` 1/0 over scored held-out pairs (bounded: the caller's sample).
    AUC = (sum of the positives' mid-ranks - P(P+1)/2) / (P N).
    """
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(logits, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if y.shape != s.shape or n_pos == 0 or n_neg == 0 or n_pos + n_neg != len(y):
        raise MetricError(f"auc needs 0/1 labels with both classes and one score each, got {n_pos} positives, {n_neg} negatives")
    ranks = rankdata(s)  # average ranks of ties
    auc = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    # log loss from logits, stably: log(1 + e^-z) for positives, log(1 + e^z) for negatives
    loss = np.where(y == 1, np.logaddexp(0.0, -s), np.logaddexp(0.0, s)).mean()
    return {"auc": float(auc), "log_loss": float(loss), "positives": n_pos, "negatives": n_neg}
