"""Our own factorization estimators: biased SVD (SGD or GD), SVD++ (+ time-aware biases), NMF by multiplicative updates.

All train through :mod:`recsys_spark.factorization.engine` (user-partitioned
shards, vectorized numpy per partition) and return a
:class:`~recsys_spark.factorization.model.FactorModel`.

==========  ================================================================
estimator   model and optimizer
==========  ================================================================
SVD         ``mu + b_u + b_i + p_u.q_i`` (Funk / Koren), ``optimizer="sgd"``
            (mini-batch SGD, parameter averaging across partitions) or
            ``"gd"`` (full-batch gradient descent, count-preconditioned, with
            momentum; ``bold_driver=True`` adapts the step: a step that
            raises the objective is undone and halved, one that lowers it
            grows by 5%); ``biased=False`` drops the biases (the objective
            MLlib's ALS minimises)
SVDpp       SVD++: ``p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j``, ``N(u)`` the
            items ``u`` rated (plus optional implicit-only pairs passed to
            ``fit``); ``time_bins > 0`` adds ``b_{i,bin(t)}`` and
            ``alpha_u * dev_u(t)`` (Koren 2009, timeSVD++ biases)
NMFMU       non-negative ``p_u.q_i`` by multiplicative updates (Lee & Seung
            on observed entries, as in Luo et al. 2014)
==========  ================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.baselines import B_I, B_U, BiasBaseline, BiasTableModel
from recsys_spark.factorization import engine
from recsys_spark.factorization.model import BI, BU, FactorModel
from recsys_spark.recommender import Recommender, Scale
from recsys_spark.schemas import COL_ITEM, COL_SCORE, COL_USER

log = logging.getLogger(__name__)


def _fit(est, train: DataFrame, method: str, hp: dict, valid: DataFrame | None, history: bool,
         time_bins: int = 0, implicit_extra: DataFrame | None = None) -> FactorModel:  # fmt: skip
    est._check_train(train)
    if est.rank < 1 or est.n_epochs < 1:
        raise ValueError(f"{est.name}: rank and n_epochs must be >= 1")
    ratings = train.persist()
    res = engine.train(
        ratings.sparkSession, ratings, method=method, rank=est.rank, n_epochs=est.n_epochs, hp=hp, seed=est.seed,
        num_partitions=est.num_partitions, valid_df=valid, history=history, time_bins=time_bins,
        implicit_extra=implicit_extra, name=est.name,
    )  # fmt: skip
    if res.mu:  # biased: the model's own mu + b_u + b_i answers cold users / items
        item_bias = res.item_factors.select(COL_ITEM, F.col(BI).alias(B_I))
        base = BiasTableModel(
            est.name, res.mu, est.scale or Scale(), res.user_factors.select(COL_USER, F.col(BU).alias(B_U)), item_bias,
            item_bias.select(COL_ITEM, F.col(B_I).alias(COL_SCORE)), ratings.select(COL_USER, COL_ITEM), "bias",
        )  # fmt: skip
    else:
        base = BiasBaseline(scale=est.scale or Scale(), name=est.name).fit(ratings)
    info = {"rank": est.rank, "method": method, "hp": hp, "history": res.history, "epoch_seconds": res.epoch_seconds}
    return FactorModel(est.name, res.mu, res.user_factors, res.item_factors, base, res.time, res.item_bins, info, source=est.name)


def _sgd_hyper(est, **extra) -> dict:
    """The step/regularization settings SVD and SVD++ share (bias lr/reg only when set), plus ``extra``."""
    hp = {"lr": est.lr, "reg": est.reg, "init_std": est.init_std, "batch_size": est.batch_size, "lr_decay": est.lr_decay, **extra}
    if est.lr_bias is not None:
        hp["lr_bias"] = est.lr_bias
    if est.reg_bias is not None:
        hp["reg_bias"] = est.reg_bias
    return hp


@dataclass
class SVD(Recommender):
    """Regularized biased matrix factorization (see the module docstring)."""

    rank: int = 100
    n_epochs: int = 20
    lr: float = 0.005
    reg: float = 0.02
    lr_bias: float | None = None  # None: lr
    reg_bias: float | None = None  # None: reg
    lr_decay: float = 1.0  # sgd: step sizes times lr_decay ** epoch
    init_std: float = 0.1
    optimizer: Literal["sgd", "gd"] = "sgd"
    batch_size: int = 256  # sgd: ratings per vectorized step
    dtype: Literal["float64", "float32"] = "float64"  # sgd: precision of the kernel's parameters
    momentum: float = 0.9  # gd only
    bold_driver: bool = False  # gd only: reject a step that raises the objective (back, lr * lr_shrink), else lr * lr_grow
    lr_grow: float = 1.05
    lr_shrink: float = 0.5
    biased: bool = True
    num_partitions: int | None = None  # None: spark.default.parallelism
    seed: int = 42
    scale: Scale = None  # type: ignore[assignment]
    name: str = "svd"

    def hyper(self) -> dict:
        extra = {"bold_driver": True, "lr_grow": self.lr_grow, "lr_shrink": self.lr_shrink} if self.bold_driver else {}
        if self.dtype != "float64":
            extra["dtype"] = self.dtype
        return _sgd_hyper(self, momentum=self.momentum, biased=self.biased, **extra)

    def fit(self, train: DataFrame, valid: DataFrame | None = None, history: bool = False) -> FactorModel:
        if self.optimizer not in ("sgd", "gd"):
            raise ValueError(f"optimizer must be sgd or gd, got {self.optimizer!r}")
        return _fit(self, train, self.optimizer, self.hyper(), valid, history)


@dataclass
class SVDpp(Recommender):
    """SVD++ with optional time-aware biases (see the module docstring)."""

    rank: int = 20
    n_epochs: int = 20
    lr: float = 0.007
    reg: float = 0.02
    lr_bias: float | None = None
    reg_bias: float | None = None
    lr_decay: float = 1.0  # step sizes times lr_decay ** epoch
    init_std: float = 0.1
    batch_size: int = 256  # ratings per batch of users
    time_bins: int = 0  # > 0: item bias per time bin and user drift alpha_u * dev_u(t)
    beta: float = 0.4  # dev_u(t) = sign(t - t_u) |t - t_u|^beta, t in days
    lr_time: float = 1e-5
    reg_time: float = 50.0
    reg_bin: float = 0.1
    num_partitions: int | None = None
    seed: int = 42
    scale: Scale = None  # type: ignore[assignment]
    name: str = "svdpp"

    def fit(self, train: DataFrame, valid: DataFrame | None = None, history: bool = False,
            implicit: DataFrame | None = None) -> FactorModel:  # fmt: skip
        """``implicit``: optional ``(user_idx, item_idx)`` pairs added to ``N(u)`` without a rating."""
        hp = _sgd_hyper(self, beta=self.beta, lr_time=self.lr_time, reg_time=self.reg_time, reg_bin=self.reg_bin)
        return _fit(self, train, "svdpp", hp, valid, history, time_bins=self.time_bins, implicit_extra=implicit)


@dataclass
class NMFMU(Recommender):
    """Non-negative matrix factorization by multiplicative updates (see the module docstring)."""

    rank: int = 15
    n_epochs: int = 50
    reg_pu: float = 0.06
    reg_qi: float = 0.06
    init_low: float = 0.0
    init_high: float = 1.0
    num_partitions: int | None = None
    seed: int = 42
    scale: Scale = None  # type: ignore[assignment]
    name: str = "nmf_mu"

    def fit(self, train: DataFrame, valid: DataFrame | None = None, history: bool = False) -> FactorModel:
        if self.init_low < 0 or self.init_high <= self.init_low:
            raise ValueError("NMF needs 0 <= init_low < init_high")
        hp = {"reg_user": self.reg_pu, "reg_item": self.reg_qi, "init_low": self.init_low, "init_high": self.init_high, "reg": 0.0}
        return _fit(self, train, "nmf_mu", hp, valid, history)
