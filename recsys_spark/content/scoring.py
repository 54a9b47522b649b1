"""Block scoring of sparse vectors: top-k per row, the content neighbour tables (exact and LSH)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.content.features import IDX, VAL
from recsys_spark.schemas import (
    COL_ITEM,
    COL_RANK,
    COL_SCORE,
    COL_USER,
    NB_A,
    NB_B,
    NB_SIM,
    NB_SUPPORT,
)

log = logging.getLogger(__name__)



def _csr(rows: list[Any], dim: int) -> Any:
    from scipy import sparse

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    for n, r in enumerate(rows):
        indptr[n + 1] = indptr[n] + len(r[IDX])
    idx = (
        np.concatenate([np.asarray(r[IDX], dtype=np.int64) for r in rows])
        if indptr[-1]
        else np.zeros(0, np.int64)
    )
    val = (
        np.concatenate([np.asarray(r[VAL], dtype=np.float64) for r in rows])
        if indptr[-1]
        else np.zeros(0)
    )
    return sparse.csr_matrix((val, idx, indptr), shape=(len(rows), dim))


def _blocks(rows: DataFrame, key: str, n_blocks: int, extra: list[str], out: str) -> DataFrame:
    """One row per block (``key mod n_blocks``): ``out`` = the block's rows ``(k, indices, values, *extra)`` sorted by key."""
    rows = rows.withColumn("_b", F.pmod(F.col(key), F.lit(n_blocks)))
    return rows.groupBy("_b").agg(F.sort_array(F.collect_list(F.struct(F.col(key).alias("k"), IDX, VAL, *extra))).alias(out)).drop("_b")


def sparse_topk(
    left: DataFrame, items: DataFrame, k: int, dim: int, *, left_key: str = COL_USER, exclude: DataFrame | None = None,
    exclude_self: bool = False, prior: DataFrame | None = None, prior_weight: float = 0.0, min_score: float | None = None,
    support: bool = False, left_block: int = 1024, item_block: int = 4096, left_group: str | None = None,
) -> DataFrame:  # fmt: skip
    """Each left row's best ``k`` items by ``left . item (+ prior_weight * prior)``: ``(left_key, item_idx, score[, support], rank)``.

    ``left``: ``(left_key, indices, values)``; ``items``: ``(item_idx, indices,
    values)``; ``exclude``: ``(left_key, item_idx)`` pairs never returned (seen
    items); ``exclude_self`` drops ``item == key`` (item-item);  ``prior``:
    ``(item_idx, prior)``, or with ``left_group`` (a small non-negative int
    column of ``left``, null read as 0) ``(group, item_idx, prior)``: each
    left row adds its group's prior (0 where its group has none for the
    item); ``min_score`` keeps only larger scores;
    ``support`` adds the count of shared non-zero features.  Blocks of rows and
    items meet in one task each (a scipy sparse product); only each task's
    partial top-k is shuffled, and one window makes the result exact (ties by
    the smaller ``item_idx``).
    """
    n_left, n_items = left.count(), items.count()
    out_cols = [left_key, COL_ITEM, COL_SCORE] + ([NB_SUPPORT] if support else [])
    schema = f"{left_key} int, {COL_ITEM} int, {COL_SCORE} double" + (
        f", {NB_SUPPORT} long" if support else ""
    )
    if n_left == 0 or n_items == 0:
        return left.sparkSession.createDataFrame([], f"{schema}, {COL_RANK} int")
    n_lb = max(1, math.ceil(n_left / left_block))
    n_ib = max(1, math.ceil(n_items / item_block))
    lrows = left.select(left_key, IDX, VAL, (F.coalesce(F.col(left_group), F.lit(0)) if left_group else F.lit(0)).cast("int").alias("_g"))
    if exclude is not None:
        ex = exclude.groupBy(left_key).agg(F.collect_list(COL_ITEM).alias("_x"))
        lrows = lrows.join(ex, left_key, "left")
    else:
        lrows = lrows.withColumn("_x", F.lit(None).cast("array<int>"))
    lrows = lrows.withColumn("_x", F.coalesce("_x", F.array().cast("array<int>")))
    u = _blocks(lrows, left_key, n_lb, ["_x", "_g"], "_l")
    irows = items.select(COL_ITEM, IDX, VAL)
    if prior is None:
        irows = irows.withColumn("_p", F.array(F.lit(0.0)))
    elif left_group is None:  # one prior for every row: group 0
        p = prior.select(COL_ITEM, F.col(prior.columns[1]).cast("double").alias("_v"))
        irows = irows.join(p, COL_ITEM, "left").withColumn("_p", F.array(F.coalesce("_v", F.lit(0.0)))).drop("_v")
    else:  # per item, a dense array of its prior in every group 0..G-1
        grp, val = [c for c in prior.columns if c != COL_ITEM][:2]
        n_groups = int(prior.agg(F.max(grp)).first()[0] or 0) + 1
        p = prior.groupBy(COL_ITEM).agg(
            F.map_from_arrays(F.collect_list(F.col(grp).cast("int")), F.collect_list(F.col(val).cast("double"))).alias("_m")
        )
        dense = F.transform(F.sequence(F.lit(0), F.lit(n_groups - 1)), lambda g: F.coalesce(F.element_at(F.col("_m"), g), F.lit(0.0)))
        irows = (
            irows.join(p, COL_ITEM, "left")
            .withColumn("_p", F.when(F.col("_m").isNull(), F.array_repeat(F.lit(0.0), n_groups)).otherwise(dense))
            .drop("_m")
        )
    i = _blocks(irows, COL_ITEM, n_ib, ["_p"], "_i")
    pairs = u.crossJoin(i).repartition(max(1, min(n_lb * n_ib, 200)))
    pw, floor = float(prior_weight), min_score

    def score_block(ls: list[Any], its: list[Any]) -> pd.DataFrame:
        lid = np.array([r["k"] for r in ls], dtype=np.int64)
        iid = np.array([r["k"] for r in its], dtype=np.int64)
        L, R = _csr(ls, dim), _csr(its, dim)
        S = np.asarray((L @ R.T).todense(), dtype=np.float64)
        if pw:
            P = np.array([r["_p"] for r in its], dtype=np.float64).reshape(len(its), -1)  # item x group
            G = P.shape[1]
            g = np.array([r["_g"] for r in ls], dtype=np.int64)
            P = np.hstack([P, np.zeros((len(its), 1))])  # a group without a prior adds 0
            S += pw * P[:, np.where((g >= 0) & (g < G), g, G)].T
        for row, r in enumerate(ls):
            x = np.asarray(r["_x"], dtype=np.int64)
            if exclude_self:
                x = np.append(x, r["k"])
            if len(x):
                pos = np.searchsorted(iid, x)
                ok = pos < len(iid)
                pos, x = pos[ok], x[ok]
                S[row, pos[iid[pos] == x]] = -np.inf
        if floor is not None:
            S[S <= floor] = -np.inf
        n = S.shape[1]
        top = np.argpartition(-S, k - 1, axis=1)[:, :k] if n > k else np.tile(np.arange(n), (len(ls), 1))
        rr = np.repeat(np.arange(len(ls)), top.shape[1])
        cc = top.ravel()
        sc = S[rr, cc]
        keep = np.isfinite(sc)
        rr, cc, sc = rr[keep], cc[keep], sc[keep]
        res = {
            left_key: lid[rr].astype(np.int32),
            COL_ITEM: iid[cc].astype(np.int32),
            COL_SCORE: sc,
        }
        if support:
            Lb, Rb = L.copy(), R.copy()
            Lb.data[:] = 1.0
            Rb.data[:] = 1.0
            shared = (Lb @ Rb.T).tocsr()
            res[NB_SUPPORT] = np.asarray(shared[rr, cc]).ravel().astype(np.int64)
        return pd.DataFrame(res)

    def score(batches):
        for pdf in batches:
            out = [score_block(ls, its) for ls, its in zip(pdf["_l"], pdf["_i"], strict=True)]
            yield pd.concat(out) if out else pd.DataFrame({c: [] for c in out_cols})

    cand = pairs.mapInPandas(score, schema)
    w = Window.partitionBy(left_key).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k)


def content_neighbors(vectors: DataFrame, dim: int, max_neighbors: int = 50, min_sim: float = 0.0) -> DataFrame:
    """Item-item content neighbour table ``(a, b, sim, support)``: each item's ``max_neighbors`` most similar (cosine > ``min_sim``)."""
    top = sparse_topk(
        vectors.withColumnRenamed(COL_ITEM, NB_A), vectors, max_neighbors, dim, left_key=NB_A,
        exclude_self=True, min_score=min_sim, support=True,
    )  # fmt: skip
    return top.select(
        F.col(NB_A).cast("int"),
        F.col(COL_ITEM).cast("int").alias(NB_B),
        F.col(COL_SCORE).alias(NB_SIM),
        F.col(NB_SUPPORT).cast("long"),
    )


def lsh_content_neighbors(
    vectors: DataFrame,
    dim: int,
    max_neighbors: int = 50,
    min_sim: float = 0.1,
    num_hash_tables: int = 8,
    bucket_length: float = 0.5,
    seed: int = 42,
) -> DataFrame:
    """Approximate :func:`content_neighbors` for large catalogues: random-projection LSH on the unit vectors.

    Pairs that collide are scored exactly; for unit vectors the Euclidean
    distance ``d`` gives ``cos = 1 - d^2 / 2``, so ``min_sim`` is the join
    threshold ``sqrt(2 - 2 min_sim)``.  ``support`` is the shared-feature count.
    """
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.linalg import VectorUDT

    @F.udf(returnType=VectorUDT())
    def to_vec(idx, val):
        return Vectors.sparse(dim, idx, val)

    v = vectors.select(COL_ITEM, to_vec(IDX, VAL).alias("v"), IDX)
    model = BucketedRandomProjectionLSH(
        inputCol="v",
        outputCol="h",
        numHashTables=num_hash_tables,
        bucketLength=bucket_length,
        seed=seed,
    ).fit(v)
    thr = math.sqrt(max(0.0, 2.0 - 2.0 * min_sim))
    j = model.approxSimilarityJoin(v, v, thr, distCol="d").where(F.col(f"datasetA.{COL_ITEM}") != F.col(f"datasetB.{COL_ITEM}"))
    pairs = j.select(
        F.col(f"datasetA.{COL_ITEM}").alias(NB_A), F.col(f"datasetB.{COL_ITEM}").alias(NB_B),
        (1 - F.col("d") * F.col("d") / 2).alias(NB_SIM),
        F.size(F.array_intersect(f"datasetA.{IDX}", f"datasetB.{IDX}")).cast("long").alias(NB_SUPPORT),
    ).where(F.col(NB_SIM) > min_sim)  # fmt: skip
    w = Window.partitionBy(NB_A).orderBy(F.desc(NB_SIM), F.asc(NB_B))
    return pairs.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= max_neighbors).drop("_r")
