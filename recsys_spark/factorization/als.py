"""MLlib ALS (explicit, implicit, non-negative) behind the project's estimator interface.

* Input: ``user_idx``/``item_idx`` are already ``int32`` (ingest maps them),
  the ratings are persisted before fitting (MLlib rejects a
  non-deterministic input) and a checkpoint directory is always set, so
  ``checkpointInterval`` really cuts the lineage of long runs.
* ``numUserBlocks`` / ``numItemBlocks`` / ``blockSize`` are parameters
  (``None``: MLlib's defaults).
* Cold start: a user or item without factors is answered by the bias
  baseline fitted on the same data and ``source`` says so, never NaN (in
  ``predict_mllib`` too: MLlib's ``coldStartStrategy="nan"`` rows are
  replaced by the baseline).
* Top-N: the factor tables scored block by block
  (:func:`~recsys_spark.factorization.model.factor_topk`, training items
  excluded).  ``recommend_mllib`` uses ``recommendForUserSubset`` asked for
  ``k + max_seen`` items (the most training items any requested user has),
  so the ``k`` best *unseen* items are always among them; training items are
  then removed and the list ranked in the contract.  Nothing is collected.
* ``residuals=True``: MLlib factorizes what the bias baseline leaves,
  ``r - (mu + b_u + b_i)``, and the model predicts ``mu + b_u + b_i + p.q``
  (ALS itself has no bias terms; this is the usual way to give it some).
* ``scale_residuals=True`` (with ``residuals``): each residual is divided by
  its user's and its item's residual scale, ``s_u = sqrt((sum e^2 + k g) /
  (n_u + k) / g)`` with ``g`` the mean squared residual and ``k`` =
  ``scale_damping`` (likewise ``s_i``), so MLlib factorizes z-scores, in
  which every user and item speaks on the same scale; the scales are folded
  back into the factors (``s_u p_u``, ``s_i q_i``), so the model still
  predicts ``mu + b_u + b_i + p.q`` and saves, loads and ranks like any other.
* ``backfit_rounds=n`` (with ``residuals``): the baseline and the factors are
  fitted in turn instead of once each (backfitting): the biases are refitted
  on what the factors leave, ``r - p.q``, then MLlib factorizes (and, with
  ``scale_residuals``, rescales) the new biases' residuals, ``n`` times.  In
  the two-stage fit the biases are estimated as if there were no factors
  and never revised, so whatever part of a user's or item's mean the
  factors would explain stays in the biases; each round is a block
  coordinate step towards the joint fit of ``mu + b_u + b_i + p.q`` that
  biased SGD solves.  The fallback for an unknown user or item stays the
  first, standalone baseline.
* Implicit feedback (``implicit_prefs=True``, Hu, Koren & Volinsky): the
  rating is the confidence ``1 + alpha * r``; the model scores preference,
  not ratings, so its rating predictions come from the bias baseline
  (``source="bias"``): use it for top-N.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS as MLlibALS
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.baselines import B_I, B_U, BiasBaseline, BiasTableModel
from recsys_spark.factorization.model import BI, BU, FACTORS, FactorModel, dot
from recsys_spark.io import fs
from recsys_spark.recommender import Recommender, Scale, as_predictions, as_topn, clip
from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_USER,
)

log = logging.getLogger(__name__)

_SCALE = "_scale"


class ALSFactorModel(FactorModel):
    """A :class:`FactorModel` over MLlib's factors; the fitted MLlib model stays reachable while in memory.

    ``predict`` / ``recommend`` score the factor tables in double precision
    (so a saved and reloaded model answers identically);
    ``predict_mllib`` / ``recommend_mllib`` answer through MLlib's own
    ``transform`` and ``recommendForUserSubset`` (float32 scores) for
    comparison.
    """

    def __init__(self, *args: Any, mllib: ALSModel | None = None, implicit: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.mllib = mllib
        self.implicit = implicit

    def predict(self, pairs: DataFrame) -> DataFrame:
        if self.implicit:  # preference scores are not ratings
            return as_predictions(self.base.with_prediction(pairs.select(COL_USER, COL_ITEM)), self.name)
        return super().predict(pairs)

    def _need_mllib(self) -> ALSModel:
        if self.mllib is None:
            raise ValueError(f"{self.name}: the MLlib model is only in memory after fit (not after load)")
        if self.mu:
            raise ValueError(f"{self.name}: fitted on baseline residuals; MLlib's scores lack the biases (use predict/recommend)")
        return self.mllib

    def predict_mllib(self, pairs: DataFrame) -> DataFrame:
        """MLlib's ``transform``; its NaN for an unknown user or item (``coldStartStrategy="nan"``) -> the bias baseline."""
        df = self.base.with_prediction(pairs.select(COL_USER, COL_ITEM), "_fb", "_fbs")
        scored = self._need_mllib().transform(df)
        ok = F.col(COL_PREDICTION).isNotNull() & ~F.isnan(F.col(COL_PREDICTION))
        out = scored.select(
            COL_USER, COL_ITEM,
            F.when(ok, clip(F.col(COL_PREDICTION).cast("double"), self.scale)).otherwise(F.col("_fb")).alias(COL_PREDICTION),
            F.when(ok, F.lit(self.source)).otherwise(F.col("_fbs")).alias(COL_SOURCE),
        )  # fmt: skip
        return as_predictions(out, self.name)

    def recommend_mllib(self, users: DataFrame, k: int = 10) -> DataFrame:
        """``recommendForUserSubset`` asked for ``k + max_seen`` items, training items removed, in the top-N contract."""
        mllib = self._need_mllib()
        want = users.select(COL_USER).distinct()
        known = want.join(self.user_factors.select(COL_USER), COL_USER, "left_semi")
        cold = want.join(self.user_factors.select(COL_USER), COL_USER, "left_anti")
        seen = self.base.seen
        max_seen = known.join(seen, COL_USER).groupBy(COL_USER).count().agg(F.max("count")).first()[0] or 0  # a scalar
        recs = mllib.recommendForUserSubset(known, k + int(max_seen))
        flat = recs.select(COL_USER, F.explode("recommendations").alias("_r")).select(
            COL_USER, F.col(f"_r.{COL_ITEM}").alias(COL_ITEM), F.col("_r.rating").cast("double").alias(COL_SCORE)
        )
        unseen = flat.join(seen, [COL_USER, COL_ITEM], "left_anti")
        w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
        top = as_topn(unseen.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), self.name)
        return top.unionByName(self.base.recommend(cold, k).withColumn("model", F.lit(self.name)))

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "implicit": self.implicit}

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> ALSFactorModel:
        base = BiasTableModel._from_state(params["base"], state)
        return cls(
            params["name"], params["mu"], state["user_factors"], state["item_factors"], base, None, None,
            params["info"], params["source"], implicit=params.get("implicit", False),
        )  # fmt: skip


@dataclass
class ALS(Recommender):
    """``pyspark.ml.recommendation.ALS`` (see the module docstring); ``nonnegative=True`` is NMF."""

    rank: int = 10
    max_iter: int = 10
    reg_param: float = 0.1
    implicit_prefs: bool = False
    alpha: float = 1.0
    nonnegative: bool = False
    num_user_blocks: int | None = None
    num_item_blocks: int | None = None
    block_size: int = 4096
    checkpoint_interval: int = 10
    residuals: bool = False  # factorize r - (mu + b_u + b_i) of the bias baseline; predict baseline + p.q
    base_reg_user: float = 15.0  # the bias baseline's damping (BiasBaseline.reg_user / reg_item)
    base_reg_item: float = 10.0
    scale_residuals: bool = False  # factorize residual / (s_u * s_i), the user's and item's damped residual scales
    scale_damping: float = 5.0  # k in s = sqrt((sum e^2 + k g) / (n + k) / g): n ratings, g the mean e^2
    backfit_rounds: int = 0  # refit the biases on r - p.q and the factors on the new residuals, this many times
    seed: int = 42
    scale: Scale = None  # type: ignore[assignment]
    name: str = "als"

    def estimator(self) -> MLlibALS:
        kw: dict[str, Any] = {}
        if self.num_user_blocks:
            kw["numUserBlocks"] = self.num_user_blocks
        if self.num_item_blocks:
            kw["numItemBlocks"] = self.num_item_blocks
        return MLlibALS(
            rank=self.rank, maxIter=self.max_iter, regParam=self.reg_param, implicitPrefs=self.implicit_prefs,
            alpha=self.alpha, nonnegative=self.nonnegative, checkpointInterval=self.checkpoint_interval,
            seed=self.seed, blockSize=self.block_size, userCol=COL_USER, itemCol=COL_ITEM, ratingCol=COL_RATING,
            coldStartStrategy="nan", **kw,
        )  # fmt: skip

    def fit(self, train: DataFrame) -> ALSFactorModel:
        self._check_train(train)
        if self.rank < 1 or self.max_iter < 1 or self.reg_param < 0:
            raise ValueError(f"{self.name}: rank and max_iter must be >= 1, reg_param >= 0")
        if self.scale_residuals and not self.residuals:
            raise ValueError(f"{self.name}: scale_residuals=True scales the baseline's residuals; set residuals=True")
        if self.scale_damping <= 0:
            raise ValueError(f"{self.name}: scale_damping must be > 0 (it keeps a one-rating user's scale finite)")
        if self.backfit_rounds < 0 or (self.backfit_rounds and not self.residuals):
            raise ValueError(f"{self.name}: backfit_rounds must be >= 0 and needs residuals=True (it refits the residuals' baseline)")
        spark = train.sparkSession
        if not fs.is_connect(spark):  # on Spark Connect the checkpoint folder is the server's (spark.checkpoint.dir)
            sc = spark.sparkContext
            if not sc.getCheckpointDir():  # checkpointInterval is silently ignored without one
                path = tempfile.mkdtemp(prefix="recsys-als-ckpt-")
                log.warning("no Spark checkpoint directory set; using %s", path)
                sc.setCheckpointDir(os.path.abspath(path))
        ratings = train.select(
            F.col(COL_USER).cast("int"), F.col(COL_ITEM).cast("int"), F.col(COL_RATING).cast("float")
        ).persist(StorageLevel.MEMORY_AND_DISK)
        base_est = BiasBaseline(reg_user=self.base_reg_user, reg_item=self.base_reg_item, scale=self.scale or Scale(), name=self.name)
        base = base_est.fit(ratings)
        if not self.residuals:
            mllib = self.estimator().fit(ratings)
            uf, itf = _factor_tables(mllib)
            uf = uf.select(COL_USER, F.lit(0.0).alias(BU), FACTORS)
            itf = itf.select(COL_ITEM, F.lit(0.0).alias(BI), FACTORS)
            mu = 0.0
        else:
            if self.implicit_prefs or self.nonnegative:
                raise ValueError(f"{self.name}: residuals=True is for explicit, signed factors only")
            biases: BiasTableModel = base
            data = None
            for rnd in range(self.backfit_rounds + 1):
                if rnd:  # backfitting: the biases again, on what the factors leave (r - p.q)
                    # the factor tables materialized first: small, and a plan that joins the persisted
                    # ratings with tables derived from them again trips Spark's cache substitution
                    p = uf.select(COL_USER, F.col(FACTORS).alias("_p")).transform(lineage.cut)
                    q = itf.select(COL_ITEM, F.col(FACTORS).alias("_q")).transform(lineage.cut)
                    rest = (
                        ratings.join(p, COL_USER)
                        .join(q, COL_ITEM)
                        .select(COL_USER, COL_ITEM, (F.col(COL_RATING) - dot(F.col("_p"), F.col("_q"))).alias(COL_RATING))
                    )
                    biases = BiasBaseline(reg_user=self.base_reg_user, reg_item=self.base_reg_item, scale=base.scale, name=self.name).fit(
                        rest
                    )
                    data.unpersist()
                    log.info("%s: backfit round %d/%d (biases refitted on r - p.q)", self.name, rnd, self.backfit_rounds)
                mllib, uf, itf, data = self._factorize(ratings, biases)
            mu = biases.mu
        info = {"rank": self.rank, "method": "mllib_als", "max_iter": self.max_iter, "reg_param": self.reg_param,
                "implicit_prefs": self.implicit_prefs, "alpha": self.alpha, "nonnegative": self.nonnegative,
                "residuals": self.residuals, "scale_residuals": self.scale_residuals,
                "backfit_rounds": self.backfit_rounds}  # fmt: skip
        return ALSFactorModel(self.name, mu, uf, itf, base, None, None, info, self.name, mllib=mllib, implicit=self.implicit_prefs)

    def _factorize(self, ratings: DataFrame, biases: BiasTableModel) -> tuple[ALSModel, DataFrame, DataFrame, DataFrame]:
        """MLlib on ``r - (mu + b_u + b_i)`` (scaled if asked): the model, the factor tables with the biases, its input."""
        mu = biases.mu
        data = (
            ratings.join(biases.user_bias, COL_USER)
            .join(biases.item_bias, COL_ITEM)
            .select(COL_USER, COL_ITEM, (F.col(COL_RATING) - F.lit(mu) - F.col(B_U) - F.col(B_I)).cast("float").alias(COL_RATING))
        )
        if self.scale_residuals:
            data, user_scale, item_scale = self._scaled(data)
        data = data.persist(StorageLevel.MEMORY_AND_DISK)  # deterministic input for MLlib
        mllib = self.estimator().fit(data)
        uf, itf = _factor_tables(mllib)
        if self.scale_residuals:  # s_u p_u . s_i q_i = s_u s_i p.q: the z-scores back on the rating scale
            uf = uf.join(user_scale, COL_USER).select(COL_USER, F.transform(FACTORS, lambda x: x * F.col(_SCALE)).alias(FACTORS))
            itf = itf.join(item_scale, COL_ITEM).select(COL_ITEM, F.transform(FACTORS, lambda x: x * F.col(_SCALE)).alias(FACTORS))
        # the biases go into the factor tables: mu + b_u + b_i + p.q
        uf = uf.join(biases.user_bias, COL_USER).select(COL_USER, F.col(B_U).alias(BU), FACTORS)
        itf = itf.join(biases.item_bias, COL_ITEM).select(COL_ITEM, F.col(B_I).alias(BI), FACTORS)
        return mllib, uf, itf, data

    def _scaled(self, res: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
        """``res`` with each residual divided by ``s_u * s_i``, and the per-user and per-item scale tables."""
        k = float(self.scale_damping)
        e2 = F.col(COL_RATING).cast("double") ** 2
        g = res.agg(F.mean(e2)).first()[0]  # a scalar: the mean squared residual
        if not g or g <= 0:  # the baseline fits exactly: nothing to scale
            g = 1.0

        def scales(key: str) -> DataFrame:
            return res.groupBy(key).agg(F.sqrt((F.sum(e2) + k * g) / (F.count(F.lit(1)) + k) / g).alias(_SCALE))

        user_scale, item_scale = scales(COL_USER), scales(COL_ITEM)
        su, si = user_scale.withColumnRenamed(_SCALE, "_su"), item_scale.withColumnRenamed(_SCALE, "_si")
        out = (
            res.join(su, COL_USER)
            .join(si, COL_ITEM)
            .select(COL_USER, COL_ITEM, (F.col(COL_RATING) / (F.col("_su") * F.col("_si"))).cast("float").alias(COL_RATING))
        )
        return out, user_scale, item_scale


def _factor_tables(mllib: ALSModel) -> tuple[DataFrame, DataFrame]:
    """MLlib's user and item factors as ``(id, factors array<double>)`` tables."""
    uf = mllib.userFactors.select(F.col("id").alias(COL_USER), F.col("features").cast("array<double>").alias(FACTORS))
    itf = mllib.itemFactors.select(F.col("id").alias(COL_ITEM), F.col("features").cast("array<double>").alias(FACTORS))
    return uf, itf
