"""The NCF paper's protocol and reconstruction checks for the deep models.

* :func:`leave_last_out`: each user's latest rating (ties: larger item id)
  is the test item, the rest is training data.
* :func:`sampled_ranking`: the test item ranked against ``negatives`` items
  the user never rated (seeded), HR@k and NDCG@k; any model answers through
  its scores (deep models' networks via ``predict_batch_udf``, popularity and
  bias through their top-N item score, others through their rating
  prediction).
* :func:`reconstruction`: how well an autoencoder reproduces its input:
  RMSE on the training ratings (AutoRec) or recall of a user's training
  items in the top-``n_u`` of the reconstruction (CDAE), over a bounded
  sample of users.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_TIMESTAMP, COL_USER
from recsys_spark.torch.train import _pos_keys


def leave_last_out(ratings: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(train, test): test holds each user's last rating by timestamp (users with >= 2 ratings)."""
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_TIMESTAMP), F.desc(COL_ITEM))
    n = F.count("*").over(Window.partitionBy(COL_USER))
    ranked = ratings.withColumn("_r", F.row_number().over(w)).withColumn("_n", n)
    test = ranked.where((F.col("_r") == 1) & (F.col("_n") >= 2)).drop("_r", "_n")
    train = ranked.where((F.col("_r") > 1) | (F.col("_n") < 2)).drop("_r", "_n")
    return train, test


def sampled_ranking(model: Any, ratings: DataFrame, test: DataFrame, negatives: int = 99, k: int = 10, seed: int = 42) -> dict[str, float]:
    """HR@k and NDCG@k of each test item against ``negatives`` sampled items its user never rated.

    ``ratings``: all of the users' ratings (negatives avoid every one of
    them).  A user with fewer than ``negatives`` unrated items is left out and
    counted (``users_skipped``).  The positives and the candidate table are collected: one row per
    test user and ``negatives + 1`` candidates each (bounded by users).
    """
    spark = test.sparkSession
    n_items = int(ratings.agg(F.max(COL_ITEM)).first()[0]) + 1
    allpos = ratings.select(COL_USER, COL_ITEM).toPandas()  # the evaluation set's ratings (small protocols)
    keys = _pos_keys(allpos[COL_USER].to_numpy(), allpos[COL_ITEM].to_numpy(), n_items)
    t = test.select(COL_USER, COL_ITEM).orderBy(COL_USER).toPandas()
    rated = np.bincount((keys // n_items).astype(np.int64), minlength=int(t[COL_USER].max() or 0) + 1) if len(t) else np.zeros(1, np.int64)
    fits = n_items - rated[t[COL_USER].to_numpy()] >= negatives  # users with fewer unrated items cannot be ranked this way
    skipped = int((~fits).sum())
    t = t[fits]
    users = t[COL_USER].to_numpy().astype(np.int64)
    negs = distinct_negatives(users, n_items, keys, negatives, np.random.default_rng(seed))
    cand = np.concatenate([t[COL_ITEM].to_numpy()[:, None], negs], axis=1)
    rows = [(int(u), int(i), j) for u, row in zip(users, cand, strict=True) for j, i in enumerate(row)]
    pairs = spark.createDataFrame(rows, f"{COL_USER} int, {COL_ITEM} int, slot int")
    if hasattr(model, "score_udf"):
        scored = pairs.withColumn("s", model.score_udf()(F.col(COL_USER), F.col(COL_ITEM)))
    elif hasattr(model, "item_score"):  # user-independent rankers (popularity, bias): their top-N score
        scored = pairs.join(model.item_score.select(COL_ITEM, F.col("score").alias("s")), COL_ITEM, "left").fillna(float("-inf"), ["s"])
    else:  # other models: their rating prediction is the score
        pred = model.predict(pairs.select(COL_USER, COL_ITEM).distinct()).select(COL_USER, COL_ITEM, F.col("prediction").alias("s"))
        scored = pairs.join(pred, [COL_USER, COL_ITEM])
    pdf = scored.select(COL_USER, "slot", "s").toPandas().sort_values([COL_USER, "slot"])
    s = pdf["s"].to_numpy().reshape(len(users), negatives + 1)
    rank = (s[:, 1:] > s[:, :1]).sum(1)  # 0: the test item first; ties count in its favour
    return {
        f"hr@{k}": float((rank < k).mean()), f"ndcg@{k}": float(np.where(rank < k, 1.0 / np.log2(rank + 2), 0.0).mean()),
        "users": int(len(users)), "users_skipped": skipped, "negatives": negatives,
    }  # fmt: skip


def distinct_negatives(users: np.ndarray, n_items: int, keys: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(len(users), n)``: per user, ``n`` distinct items it never rated (keys: sorted ``u * n_items + i``)."""
    out = np.empty((len(users), n), dtype=np.int64)
    for row, u in enumerate(users):
        lo, hi = np.searchsorted(keys, [u * n_items, (u + 1) * n_items])
        rated = keys[lo:hi] - u * n_items
        if n_items - len(rated) < n:
            raise ValueError(f"user {u} has only {n_items - len(rated)} unrated items, {n} negatives asked")
        if n_items - len(rated) < 4 * n:  # a heavy rater: draw from the unrated items directly
            out[row] = rng.choice(np.setdiff1d(np.arange(n_items), rated), size=n, replace=False)
            continue
        chosen: list[int] = []
        while len(chosen) < n:  # rejection: rated items are a small part of the catalogue for almost every user
            draw = rng.integers(0, n_items, size=2 * n)
            fresh = draw[~np.isin(draw, rated)]
            chosen = list(dict.fromkeys([*chosen, *fresh.tolist()]))[:n]
        out[row] = chosen
    return out


def reconstruction(model: Any, train: DataFrame, max_users: int = 500, seed: int = 0) -> dict[str, float]:
    """AutoRec: RMSE of the reconstructed training ratings; CDAE: recall of training items in the top-``n_u``."""
    import torch

    net = model.network()
    # the sample of users is drawn in Spark (seeded hash order); only their ratings reach the driver
    users_df = train.select(COL_USER).distinct().orderBy(F.xxhash64(F.lit(seed), COL_USER), COL_USER).limit(max_users)
    pdf = train.join(users_df, COL_USER, "left_semi").select(COL_USER, COL_ITEM, COL_RATING).toPandas()
    users = np.unique(pdf[COL_USER].to_numpy())
    u = torch.from_numpy(pdf[COL_USER].to_numpy().astype(np.int64))
    i = torch.from_numpy(pdf[COL_ITEM].to_numpy().astype(np.int64))
    with torch.no_grad():
        if model.kind == "autorec":
            pred = net.score(u, i).numpy()
            return {
                "train_rmse": float(np.sqrt(np.mean((np.clip(pred, model.scale.lo, model.scale.hi) - pdf[COL_RATING].to_numpy()) ** 2))),
                "users": int(len(users)),
            }
        recalls = []
        items = torch.arange(model.n_items)
        for user, grp in pdf.groupby(COL_USER):
            s = net.score(torch.full((model.n_items,), int(user)), items).numpy()
            n = len(grp)
            top = np.argpartition(-s, n - 1)[:n]
            recalls.append(len(set(top.tolist()) & set(grp[COL_ITEM].tolist())) / n)
    return {"train_recall_at_n": float(np.mean(recalls)), "users": int(len(users))}
