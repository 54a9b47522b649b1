""""SVD with imputation": truncated SVD of the baseline-imputed, centred rating matrix (the classical reference).

The matrix ``R`` (users x items) is filled with the bias baseline
``mu + b_u + b_i`` wherever a rating is missing and the baseline is then
subtracted, so the centred matrix is the sparse residual matrix
``r_ui - mu - b_u - b_i`` on observed entries and 0 elsewhere (Sarwar et al.
2000 impute item means; the baseline is the same idea with both sides).
Its rank-``k`` truncated SVD ``U_k S_k V_k^T`` comes from MLlib's
``IndexedRowMatrix.computeSVD`` (ARPACK on distributed sparse rows: only
``k`` vectors of the catalogue size reach the driver), and

    r_hat(u, i) = mu + b_u + b_i + (U_k S_k^1/2)_u . (V_k S_k^1/2)_i
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel
from pyspark.mllib.linalg import Vectors
from pyspark.mllib.linalg.distributed import IndexedRow, IndexedRowMatrix
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.baselines import B_I, B_U, BiasBaseline
from recsys_spark.factorization.model import BI, BU, FACTORS, FactorModel
from recsys_spark.recommender import Recommender, Scale
from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_USER

log = logging.getLogger(__name__)


@dataclass
class SVDImpute(Recommender):
    rank: int = 15
    reg_user: float = 15.0  # the imputing bias baseline
    reg_item: float = 10.0
    scale: Scale = None  # type: ignore[assignment]
    name: str = "svd_impute"

    def fit(self, train: DataFrame) -> FactorModel:
        self._check_train(train)
        spark = train.sparkSession
        ratings = train.select(COL_USER, COL_ITEM, COL_RATING).persist(StorageLevel.MEMORY_AND_DISK)
        base = BiasBaseline(reg_user=self.reg_user, reg_item=self.reg_item, scale=self.scale or Scale(), name=self.name).fit(ratings)
        n_items = int(ratings.agg(F.max(COL_ITEM)).first()[0]) + 1
        if self.rank >= n_items:
            raise ValueError(f"{self.name}: rank {self.rank} must be below the number of items ({n_items})")
        resid = (
            ratings.join(base.user_bias, COL_USER).join(base.item_bias, COL_ITEM)
            .select(COL_USER, COL_ITEM, (F.col(COL_RATING) - F.lit(base.mu) - F.col(B_U) - F.col(B_I)).alias("_e"))
        )  # fmt: skip
        rows = resid.groupBy(COL_USER).agg(F.sort_array(F.collect_list(F.struct(COL_ITEM, "_e"))).alias("_r"))
        rdd = rows.rdd.map(
            lambda row: IndexedRow(row[0], Vectors.sparse(n_items, [x[0] for x in row[1]], [x[1] for x in row[1]]))
        )
        mat = IndexedRowMatrix(rdd)
        svd = mat.computeSVD(self.rank, computeU=True)
        s = np.asarray(svd.s.toArray())
        root = np.sqrt(s)
        V = np.asarray(svd.V.toArray()) * root[None, :]  # n_items x k: k catalogue-sized vectors
        root_l = root.tolist()
        users = spark.createDataFrame(
            svd.U.rows.map(lambda r: (int(r.index), [float(a * b) for a, b in zip(r.vector.toArray(), root_l, strict=True)])),
            f"{COL_USER} int, {FACTORS} array<double>",
        )
        rated = ratings.select(COL_ITEM).distinct()
        items = spark.createDataFrame([(j, V[j].tolist()) for j in range(n_items)], f"{COL_ITEM} int, {FACTORS} array<double>").join(
            rated, COL_ITEM, "left_semi"
        )
        # the baseline's biases go into the factor tables (mu + b_u + b_i + p.q)
        users = users.join(base.user_bias, COL_USER).select(COL_USER, F.col(B_U).alias(BU), FACTORS).transform(lineage.cut)
        items = items.join(base.item_bias, COL_ITEM).select(COL_ITEM, F.col(B_I).alias(BI), FACTORS).transform(lineage.cut)
        log.info("%s: top singular values %s", self.name, np.round(s[:5], 3).tolist())
        info = {"rank": self.rank, "method": "imputed_svd", "singular_values": s.tolist()}
        return FactorModel(self.name, base.mu, users, items, base, info=info, source=self.name)
