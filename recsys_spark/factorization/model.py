"""The fitted latent-factor model every factorization estimator returns.

    r_hat(u, i, t) = mu + b_u + b_i + p_u . q_i   [+ alpha_u * dev_u(t) + b_{i,bin(t)}]

``user_factors``: ``(user_idx, b_u, factors)``; ``item_factors``:
``(item_idx, b_i, factors)`` (``factors`` an ``array<double>``).  Models
without biases (ALS, NMF) store ``b = 0`` and ``mu = 0``; SVD++ stores the
user's effective vector ``p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j`` (its
implicit set is fixed at training time).  The time-aware option adds
``alpha``/``t_mean`` (days) to the user table and an ``item_bins`` table
``(item_idx, bin, b_ib)``; it uses the ``timestamp`` column of the pairs when
they have one (the bias terms without time otherwise).

A pair whose user or item has no factors is answered by the bias baseline
fitted on the same data (``source`` says which term answered), so cold
starts never yield NaN.  Top-N scores every (known user, item) pair block by
block in numpy (:func:`factor_topk`), the training items of each user
excluded; users without factors get the baseline's list.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasTableModel
from recsys_spark.recommender import RecommenderModel, Scale, as_predictions, as_topn, clip, top_k_mask
from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RANK,
    COL_SCORE,
    COL_SOURCE,
    COL_TIMESTAMP,
    COL_USER,
)

log = logging.getLogger(__name__)

FACTORS, BU, BI = "factors", "b_u", "b_i"
ALPHA, T_MEAN, BIN, B_IB = "alpha", "t_mean", "bin", "b_ib"
USER_FACTORS_DDL = f"{COL_USER} int, {BU} double, {FACTORS} array<double>"
ITEM_FACTORS_DDL = f"{COL_ITEM} int, {BI} double, {FACTORS} array<double>"
ITEM_BINS_DDL = f"{COL_ITEM} int, {BIN} int, {B_IB} double"
SECONDS_PER_DAY = 86400.0


def dot(a, b):
    """``sum(a * b)`` of two ``array<double>`` columns, in Spark SQL (no Python)."""
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, x: acc + x)


def time_terms(t_days, params: dict[str, Any]):
    """(bin column, dev_u(t) column) for the time-aware biases; ``t_days`` in days."""
    tp = params
    b = F.floor((t_days - F.lit(tp["t0"])) / F.lit(tp["bin_width"])).cast("int")
    b = F.least(F.lit(tp["n_bins"] - 1), F.greatest(F.lit(0), b))
    d = t_days - F.col(T_MEAN)
    dev = F.signum(d) * F.pow(F.abs(d), F.lit(tp["beta"]))
    return b, dev


class FactorModel(RecommenderModel):
    """Biased (or plain) latent factors with the bias baseline as fallback."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "user_factors", "item_factors", "item_bins", "user_bias", "item_bias", "item_score", "seen",
    )  # fmt: skip

    def __init__(
        self, name: str, mu: float, user_factors: DataFrame, item_factors: DataFrame, base: BiasTableModel,
        time: dict[str, Any] | None = None, item_bins: DataFrame | None = None, info: dict[str, Any] | None = None,
        source: str = "factors",
    ) -> None:  # fmt: skip
        self.name = name
        self.mu = mu
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.base = base
        self.time = time  # {"t0", "bin_width", "n_bins", "beta"} (days) or None
        self.item_bins = item_bins
        self.info = info or {}  # training history and hyper-parameters (JSON-able)
        self.source = source

    @property
    def scale(self) -> Scale:
        return self.base.scale

    @property
    def rank(self) -> int:
        return int(self.info.get("rank", 0))

    def predict(self, pairs: DataFrame) -> DataFrame:
        cols = [COL_USER, COL_ITEM] + ([COL_TIMESTAMP] if self.time and COL_TIMESTAMP in pairs.columns else [])
        df = self.base.with_prediction(pairs.select(*cols), "_fb", "_fbs")
        uf = self.user_factors.select(COL_USER, F.col(BU).alias("_bu"), F.col(FACTORS).alias("_p"), *self._user_time_cols())
        itf = self.item_factors.select(COL_ITEM, F.col(BI).alias("_bi"), F.col(FACTORS).alias("_q"))
        df = df.join(uf, COL_USER, "left").join(itf, COL_ITEM, "left")
        pred = F.lit(self.mu) + F.col("_bu") + F.col("_bi") + dot(F.col("_p"), F.col("_q"))
        if self.time and COL_TIMESTAMP in df.columns:
            t_days = F.col(COL_TIMESTAMP).cast("double") / SECONDS_PER_DAY
            b, dev = time_terms(t_days, self.time)
            df = df.withColumn(BIN, b).join(self.item_bins, [COL_ITEM, BIN], "left")
            pred = pred + F.coalesce(F.col(ALPHA) * dev, F.lit(0.0)) + F.coalesce(F.col(B_IB), F.lit(0.0))
        known = F.col("_p").isNotNull() & F.col("_q").isNotNull()
        out = df.select(
            COL_USER, COL_ITEM,
            F.when(known, clip(pred, self.scale)).otherwise(F.col("_fb")).alias(COL_PREDICTION),
            F.when(known, F.lit(self.source)).otherwise(F.col("_fbs")).alias(COL_SOURCE),
        )  # fmt: skip
        return as_predictions(out, self.name)

    def _user_time_cols(self) -> list:
        if not self.time:
            return []
        return [F.col(ALPHA), F.col(T_MEAN)]

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        want = users.select(COL_USER).distinct()
        known = want.join(self.user_factors.select(COL_USER), COL_USER, "left_semi")
        cold = want.join(self.user_factors.select(COL_USER), COL_USER, "left_anti")
        top = factor_topk(known, self.user_factors, self.item_factors, self.base.seen, k, self.name, self.mu)
        return top.unionByName(self.base.recommend(cold, k).withColumn("model", F.lit(self.name)))

    # -- persistence -------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        spark = self.user_factors.sparkSession
        bins = self.item_bins if self.item_bins is not None else spark.createDataFrame([], ITEM_BINS_DDL)
        return {"user_factors": self.user_factors, "item_factors": self.item_factors, "item_bins": bins, **self.base._state()}

    def _params(self) -> dict[str, Any]:
        return {
            "name": self.name, "mu": self.mu, "time": self.time, "info": self.info, "source": self.source,
            "base": self.base._params(),
        }  # fmt: skip

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> FactorModel:
        base = BiasTableModel._from_state(params["base"], state)
        return cls(
            params["name"], params["mu"], state["user_factors"], state["item_factors"], base, params["time"],
            state["item_bins"] if params["time"] else None, params["info"], params["source"],
        )  # fmt: skip


def factor_topk(
    users: DataFrame, user_factors: DataFrame, item_factors: DataFrame, seen: DataFrame, k: int, name: str,
    mu: float = 0.0, user_block: int = 1024, item_block: int = 4096,
) -> DataFrame:  # fmt: skip
    """Top-``k`` unseen items per user by ``mu + b_u + b_i + p_u . q_i``, in the top-N contract.

    Users and items are grouped into blocks; every (user block, item block)
    pair is one task that scores the block with a matrix product, masks the
    user's training items and keeps each user's best ``k`` (ties at the
    boundary kept); one window over the partial lists makes the result exact,
    ties broken by the smaller ``item_idx``.  Only blocks and partial lists
    are shuffled, never a (user, item) cross product.
    """
    n_users = users.count()  # a scalar: sizes the blocks
    if n_users == 0:
        return as_topn(users.sparkSession.createDataFrame([], f"{COL_USER} int, {COL_RANK} int, {COL_ITEM} int, {COL_SCORE} double"), name)
    n_items = item_factors.count()
    n_ub = max(1, math.ceil(n_users / user_block))
    n_ib = max(1, math.ceil(n_items / item_block))
    seen_lists = seen.groupBy(COL_USER).agg(F.collect_list(COL_ITEM).alias("_seen"))
    u = (
        users.join(user_factors, COL_USER)
        .join(seen_lists, COL_USER, "left")
        .withColumn("_ub", F.pmod(F.col(COL_USER), F.lit(n_ub)))
        .groupBy("_ub")
        .agg(
            F.sort_array(
                F.collect_list(F.struct(COL_USER, BU, FACTORS, F.coalesce("_seen", F.array().cast("array<int>")).alias("s")))
            ).alias("_u")
        )
    )
    i = (
        item_factors.withColumn("_ib", F.pmod(F.col(COL_ITEM), F.lit(n_ib)))
        .groupBy("_ib")
        .agg(F.sort_array(F.collect_list(F.struct(COL_ITEM, BI, FACTORS))).alias("_i"))
    )
    pairs = u.crossJoin(i).repartition(max(1, min(n_ub * n_ib, 200)))
    schema = f"{COL_USER} int, {COL_ITEM} int, {COL_SCORE} double"

    def score(batches):
        for pdf in batches:
            out = [_score_block(us, its, k, mu) for us, its in zip(pdf["_u"], pdf["_i"], strict=True)]
            yield pd.concat(out) if out else pd.DataFrame({COL_USER: [], COL_ITEM: [], COL_SCORE: []})

    cand = pairs.mapInPandas(score, schema)
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return as_topn(cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), name)


def _score_block(us, its, k: int, mu: float) -> pd.DataFrame:
    """Candidates of one (user block, item block) pair; ``us``/``its``: sequences of structs (dicts)."""
    uid = np.array([x[COL_USER] for x in us], dtype=np.int64)
    iid = np.array([x[COL_ITEM] for x in its], dtype=np.int64)
    P = np.stack([np.asarray(x[FACTORS], dtype=np.float64) for x in us])
    Q = np.stack([np.asarray(x[FACTORS], dtype=np.float64) for x in its])
    S = P @ Q.T + np.array([x[BU] for x in us])[:, None] + np.array([x[BI] for x in its])[None, :] + mu
    for row_i, x in enumerate(us):  # mask training items present in this item block
        s = np.asarray(x["s"], dtype=np.int64)
        if len(s):
            pos = np.searchsorted(iid, s)
            ok = pos < len(iid)
            pos, s = pos[ok], s[ok]
            S[row_i, pos[iid[pos] == s]] = -np.inf
    r, c = np.nonzero(top_k_mask(S, k))
    return pd.DataFrame({COL_USER: uid[r].astype(np.int32), COL_ITEM: iid[c].astype(np.int32), COL_SCORE: S[r, c]})
