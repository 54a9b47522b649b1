"""Baselines as Spark estimators: global/user/item mean, popularity, bias baseline.

Every baseline predicts ``mu + b_u + b_i`` with some terms absent, which
gives one fitted-model class (:class:`BiasTableModel`) and an explicit
fallback chain: a term whose user/item was not in training is dropped, and
``source`` names what answered:

==================  =======================================================
estimator           prediction (source when a term is unknown)
==================  =======================================================
GlobalMean          ``mu`` ("global_mean")
UserMean            user's mean ("user_mean") -> ``mu`` ("global_mean")
ItemMean            item's mean ("item_mean") -> ``mu`` ("global_mean")
Popularity          damped item mean ("popularity") -> ``mu``; top-N by
                    rating count (``kind="count"``) or damped mean
                    (``kind="mean"``)
BiasBaseline        ``mu + b_u + b_i`` ("bias"); ``mu + b_u`` ("user_bias")
                    for an unknown item; ``mu + b_i`` ("item_bias") for an
                    unknown user; ``mu`` ("global_mean")
==================  =======================================================

The bias baseline is Koren's baseline predictor fitted by alternating
regularized updates (users first, then items, each sweep)::

    b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (reg_user + |R(u)|)
    b_i = sum_{u in R(i)} (r_ui - mu - b_u) / (reg_item + |R(i)|)

Defaults: ``reg_user=15, reg_item=10, n_iter=10``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.recommender import (
    Recommender,
    RecommenderModel,
    Scale,
    as_predictions,
    clip,
    topk_from_item_scores,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_USER,
)

log = logging.getLogger(__name__)

B_U, B_I = "b_u", "b_i"


class BiasTableModel(RecommenderModel):
    """``mu + b_u + b_i`` with optional tables, plus item scores for top-N."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("user_bias", "item_bias", "item_score", "seen")

    def __init__(
        self, name: str, mu: float, scale: Scale, user_bias: DataFrame | None, item_bias: DataFrame | None,
        item_score: DataFrame, seen: DataFrame, full_source: str,
    ) -> None:  # fmt: skip
        self.name = name
        self.mu = mu
        self.scale = scale
        self.user_bias = user_bias  # (user_idx, b_u) or None
        self.item_bias = item_bias  # (item_idx, b_i) or None
        self.item_score = item_score  # (item_idx, score)
        self.seen = seen  # (user_idx, item_idx) rated in training
        self.full_source = full_source

    def predict(self, pairs: DataFrame) -> DataFrame:
        return as_predictions(self.with_prediction(pairs.select(COL_USER, COL_ITEM)), self.name)

    def with_prediction(self, df: DataFrame, pred_col: str = COL_PREDICTION, source_col: str = COL_SOURCE) -> DataFrame:
        """``df`` (any columns, with ``user_idx``/``item_idx``) plus the clipped prediction and its source.

        Other models use it as their fallback: ``pred_col``/``source_col`` name the added columns.
        """
        keep = set(df.columns)
        pred = F.lit(self.mu)
        known_u = known_i = F.lit(False)
        if self.user_bias is not None:
            df = df.join(self.user_bias, COL_USER, "left")
            pred = pred + F.coalesce(F.col(B_U), F.lit(0.0))
            known_u = F.col(B_U).isNotNull()
        if self.item_bias is not None:
            df = df.join(self.item_bias, COL_ITEM, "left")
            pred = pred + F.coalesce(F.col(B_I), F.lit(0.0))
            known_i = F.col(B_I).isNotNull()
        has_u, has_i = self.user_bias is not None, self.item_bias is not None
        if has_u and has_i:
            source = (
                F.when(known_u & known_i, F.lit(self.full_source))
                .when(known_u, F.lit("user_bias"))
                .when(known_i, F.lit("item_bias"))
                .otherwise(F.lit("global_mean"))
            )
        elif has_u:
            source = F.when(known_u, F.lit(self.full_source)).otherwise(F.lit("global_mean"))
        elif has_i:
            source = F.when(known_i, F.lit(self.full_source)).otherwise(F.lit("global_mean"))
        else:
            source = F.lit("global_mean")
        drop = [c for c in (B_U, B_I) if c in df.columns and c not in keep]
        return df.select(*[c for c in df.columns if c not in drop], clip(pred, self.scale).alias(pred_col), source.alias(source_col))

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        return topk_from_item_scores(users, self.item_score, self.seen, k, self.name)

    # -- persistence -------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        spark = self.item_score.sparkSession
        empty_u = spark.createDataFrame([], f"{COL_USER} int, {B_U} double")
        empty_i = spark.createDataFrame([], f"{COL_ITEM} int, {B_I} double")
        return {
            "user_bias": self.user_bias if self.user_bias is not None else empty_u,
            "item_bias": self.item_bias if self.item_bias is not None else empty_i,
            "item_score": self.item_score,
            "seen": self.seen,
        }

    def _params(self) -> dict[str, Any]:
        return {
            "name": self.name, "mu": self.mu, "scale": [self.scale.lo, self.scale.hi],
            "has_user_bias": self.user_bias is not None, "has_item_bias": self.item_bias is not None,
            "full_source": self.full_source,
        }  # fmt: skip

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> BiasTableModel:
        return cls(
            params["name"], params["mu"], Scale(*params["scale"]),
            state["user_bias"] if params["has_user_bias"] else None,
            state["item_bias"] if params["has_item_bias"] else None,
            state["item_score"], state["seen"], params["full_source"],
        )  # fmt: skip


def _global_mean(train: DataFrame) -> float:
    mu = train.agg(F.avg(COL_RATING)).first()[0]  # a scalar
    if mu is None:
        raise ValueError("cannot fit on empty training data")
    return float(mu)


def _seen(train: DataFrame) -> DataFrame:
    return train.select(COL_USER, COL_ITEM)


@dataclass
class GlobalMean(Recommender):
    scale: Scale = None  # type: ignore[assignment]
    name: str = "global_mean"

    def fit(self, train: DataFrame) -> BiasTableModel:
        self._check_train(train)
        mu = _global_mean(train)
        score = train.select(COL_ITEM).distinct().withColumn(COL_SCORE, F.lit(mu))
        return BiasTableModel(self.name, mu, self.scale or Scale(), None, None, score, _seen(train), "global_mean")


@dataclass
class UserMean(Recommender):
    scale: Scale = None  # type: ignore[assignment]
    name: str = "user_mean"

    def fit(self, train: DataFrame) -> BiasTableModel:
        self._check_train(train)
        mu = _global_mean(train)
        ub = train.groupBy(COL_USER).agg((F.avg(COL_RATING) - mu).alias(B_U))
        # the user term does not order items: fall back to the global item mean for top-N
        score = train.groupBy(COL_ITEM).agg(F.avg(COL_RATING).alias(COL_SCORE))
        return BiasTableModel(self.name, mu, self.scale or Scale(), ub, None, score, _seen(train), "user_mean")


@dataclass
class ItemMean(Recommender):
    scale: Scale = None  # type: ignore[assignment]
    name: str = "item_mean"

    def fit(self, train: DataFrame) -> BiasTableModel:
        self._check_train(train)
        mu = _global_mean(train)
        means = train.groupBy(COL_ITEM).agg(F.avg(COL_RATING).alias("_m"))
        ib = means.select(COL_ITEM, (F.col("_m") - mu).alias(B_I))
        score = means.select(COL_ITEM, F.col("_m").alias(COL_SCORE))
        return BiasTableModel(self.name, mu, self.scale or Scale(), None, ib, score, _seen(train), "item_mean")


@dataclass
class Popularity(Recommender):
    """Most popular items: by rating count, or by mean rating damped towards ``mu``.

    Damped mean: ``(sum_r + damping * mu) / (n + damping)``; it is also the
    rating prediction (``source="popularity"``).
    """

    kind: Literal["count", "mean"] = "count"
    damping: float = 10.0
    scale: Scale = None  # type: ignore[assignment]
    name: str = "popularity"

    def fit(self, train: DataFrame) -> BiasTableModel:
        self._check_train(train)
        if self.kind not in ("count", "mean"):
            raise ValueError(f"Popularity.kind must be 'count' or 'mean', got {self.kind!r}")
        mu = _global_mean(train)
        stats = train.groupBy(COL_ITEM).agg(F.count("*").alias("_n"), F.sum(COL_RATING).alias("_s"))
        damped = (F.col("_s") + self.damping * mu) / (F.col("_n") + self.damping)
        ib = stats.select(COL_ITEM, (damped - mu).alias(B_I))
        score = stats.select(COL_ITEM, (F.col("_n").cast("double") if self.kind == "count" else damped).alias(COL_SCORE))
        return BiasTableModel(self.name, mu, self.scale or Scale(), None, ib, score, _seen(train), "popularity")


class PopularityRatings:
    """For top-N models whose rating predictions are their popularity ``fallback``'s damped item means."""

    name: str
    fallback: BiasTableModel

    @property
    def scale(self) -> Scale:
        return self.fallback.scale

    def predict(self, pairs: DataFrame) -> DataFrame:
        return as_predictions(self.fallback.with_prediction(pairs.select(COL_USER, COL_ITEM)), self.name)


CHECKPOINT_EVERY = 5  # BiasBaseline sweeps between lineage cuts


@dataclass
class BiasBaseline(Recommender):
    """``mu + b_u + b_i`` by alternating regularized updates (see module docstring)."""

    reg_user: float = 15.0
    reg_item: float = 10.0
    n_iter: int = 10
    scale: Scale = None  # type: ignore[assignment]
    name: str = "bias"

    def fit(self, train: DataFrame) -> BiasTableModel:
        self._check_train(train)
        if self.n_iter < 1 or self.reg_user < 0 or self.reg_item < 0:
            raise ValueError("BiasBaseline needs n_iter >= 1 and non-negative regularization")
        mu = _global_mean(train)
        r = train.select(COL_USER, COL_ITEM, COL_RATING).persist()
        bi = r.select(COL_ITEM).distinct().withColumn(B_I, F.lit(0.0))
        bu = None
        for it in range(self.n_iter):
            # each table feeds only the next sweep, so a lazy chain computes every sweep once; cutting the
            # lineage every CHECKPOINT_EVERY sweeps keeps the plans small with 4 jobs instead of 2 per sweep
            cut = (it + 1) % CHECKPOINT_EVERY == 0 or it == self.n_iter - 1
            bu = (
                r.join(bi, COL_ITEM)
                .groupBy(COL_USER)
                .agg((F.sum(F.col(COL_RATING) - mu - F.col(B_I)) / (self.reg_user + F.count("*"))).alias(B_U))
            )
            bu = bu.transform(lineage.cut) if cut else bu
            bi = (
                r.join(bu, COL_USER)
                .groupBy(COL_ITEM)
                .agg((F.sum(F.col(COL_RATING) - mu - F.col(B_U)) / (self.reg_item + F.count("*"))).alias(B_I))
            )
            bi = bi.transform(lineage.cut) if cut else bi
            log.debug("bias sweep %d/%d", it + 1, self.n_iter)
        r.unpersist()
        score = bi.select(COL_ITEM, F.col(B_I).alias(COL_SCORE))
        return BiasTableModel(self.name, mu, self.scale or Scale(), bu, bi, score, _seen(train), "bias")

