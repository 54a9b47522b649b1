"""Block scoring of sparse vectors: top-k per row, the content neighbour tables (exact and LSH)."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.content.features import IDX, VAL
from recsys_spark.io.fs import is_connect
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

BROADCAST_MB = 256.0  # sparse_topk ships the item side to every task up to this size
CONNECT_BROADCAST_MB = 64.0  # on Spark Connect the closure travels in the plan (gRPC messages: 128 MB by default)


class _ItemSide:
    """The item side of :func:`sparse_topk` as shipped to tasks, identical items folded into one column.

    Items with the same vector (and prior) get the same score from every left
    row, so each distinct one is scored once: ``matrix`` (and ``prior``, item
    x group with a zero column last) hold one row per distinct item, in the
    order of their smallest ids; ``members[starts[g]:starts[g] + sizes[g]]``
    are the ids of distinct item ``g``, ascending; ``group`` maps each id's
    position in ``ids`` (ascending) to its distinct item.  Catalogues whose
    items carry only a few categorical features (genres, a decade, a
    popularity band) have many such duplicates: the 105K-item long-tail case
    has 30,830 distinct vectors.
    """

    def __init__(self, pdf: pd.DataFrame, dim: int, with_prior: bool) -> None:
        self.ids = pdf[COL_ITEM].to_numpy(np.int64)
        prior = None
        if with_prior:
            P = np.vstack([np.asarray(x, dtype=np.float64) for x in pdf["_p"]]) if len(pdf) else np.zeros((0, 1))
            prior = np.hstack([P, np.zeros((len(P), 1))])
        keys = [
            np.asarray(i, dtype=np.int64).tobytes() + np.asarray(v, dtype=np.float64).tobytes() + (b"" if prior is None else prior[n].tobytes())  # noqa: E501
            for n, (i, v) in enumerate(zip(pdf[IDX], pdf[VAL], strict=True))
        ]  # fmt: skip
        codes, uniq = pd.factorize(pd.Series(keys, dtype=object), sort=False)  # first appearance: smallest id first
        self.group = codes.astype(np.int64)
        order = np.argsort(codes, kind="stable")
        self.members = self.ids[order]
        self.sizes = np.bincount(codes, minlength=len(uniq)).astype(np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes
        full = _csr_arrays(pdf[IDX], pdf[VAL], dim)
        first = order[self.starts]  # each distinct item's smallest id (positions ascend within a code)
        self.matrix = full[first]
        self.prior = None if prior is None else prior[first]


def _csr_arrays(indices: Any, values: Any, dim: int) -> Any:
    """CSR matrix of rows given as arrays of column indices and values (Arrow array columns in pandas)."""
    from scipy import sparse

    lens = np.fromiter((len(x) for x in indices), dtype=np.int64, count=len(indices))
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    idx = np.concatenate([np.asarray(x, dtype=np.int64) for x in indices]) if indptr[-1] else np.zeros(0, np.int64)
    val = np.concatenate([np.asarray(x, dtype=np.float64) for x in values]) if indptr[-1] else np.zeros(0)
    return sparse.csr_matrix((val, idx, indptr), shape=(len(lens), dim))


def _kth(S: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k``-th largest value (``-inf`` where the row is shorter), as a column."""
    n = S.shape[1]
    if n < k:
        return np.full((len(S), 1), -np.inf)
    return np.partition(S, n - k, axis=1)[:, n - k : n - k + 1]


def _top_columns(S: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best columns of ``S`` (``k`` < its width), ties to the smaller column: rows x k, ascending columns."""
    kth = _kth(S, k)
    above, tied = S > kth, S == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= need))  # exactly k per row
    return np.nonzero(keep)[1].reshape(len(S), k)


def _best(rows: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Of flat ``(row, score, id)`` candidates, each row's best ``k`` by score then the smaller id, in order, with ranks (1..)."""
    order = np.lexsort((ids, -scores, rows))
    rows, scores, ids = rows[order], scores[order], ids[order]
    start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
    rank = np.arange(len(rows)) - np.repeat(start, np.diff(np.r_[start, len(rows)]))
    keep = rank < k
    return rows[keep], scores[keep], ids[keep], rank[keep] + 1


def _topk_task(batches, *, side: _ItemSide, k: int, key: str, exclude_self: bool, pw: float, floor: float | None,
               support: bool, left_block: int, item_block: int):  # fmt: skip
    """mapInPandas body of :func:`sparse_topk`'s shipped-items layout: left rows in, their top-k out (ranked).

    Per block of left rows, the distinct items are scored a block at a time.
    A distinct item stands for ``sizes[g]`` ids with its score, less the ids
    excluded for that row (one wholly excluded is ``-inf``).  The first block
    keeps every distinct item scoring at least the row's ``k``-th best (each
    stands for at least one id, so no id outside can be in the answer); later
    blocks only those scoring at least the row's current ``k``-th id.  The
    survivors are expanded to their ids (at most ``k`` plus the row's
    exclusions each), the excluded removed, and the best ``k`` kept.
    """
    ids, U, n = side.ids, side.matrix, side.matrix.shape[0]
    chunks = [(c0, min(n, c0 + item_block)) for c0 in range(0, n, item_block)]
    UT = [U[c0:c1].T.tocsr() for c0, c1 in chunks]
    span = int(ids.max()) + 1 if len(ids) else 1  # (row, id) pairs as one int64 key: row * span + id
    Ub = U.copy()
    Ub.data[:] = 1.0
    for pdf in batches:
        for b0 in range(0, len(pdf), left_block):
            blk = pdf.iloc[b0 : b0 + left_block]
            m = len(blk)
            L = _csr_arrays(blk[IDX], blk[VAL], U.shape[1])
            lid = blk[key].to_numpy(np.int64)
            xs = [np.asarray(x, dtype=np.int64) for x in blk["_x"]]
            if exclude_self:
                xs = [np.append(x, u) for x, u in zip(xs, lid, strict=True)]
            x_row = np.repeat(np.arange(m), [len(x) for x in xs])
            x_id = np.concatenate(xs) if len(x_row) else np.zeros(0, np.int64)
            x_pos = np.searchsorted(ids, x_id)
            ok = x_pos < len(ids)
            ok[ok] = ids[x_pos[ok]] == x_id[ok]
            x_row, x_id = np.unique(np.stack([x_row[ok], x_id[ok]]), axis=1) if ok.any() else (x_row[:0], x_id[:0])
            x_grp = side.group[np.searchsorted(ids, x_id)]
            # distinct items every one of whose ids the row excludes: -inf for that row
            pair, n_x = np.unique(x_row * n + x_grp, return_counts=True)
            gone = pair[n_x >= side.sizes[pair % n]]
            gone_row, gone_grp = gone // n, gone % n
            cap = k + np.bincount(x_row, minlength=m)  # ids expanded per distinct item, per row
            x_key = np.sort(x_row * span + x_id)
            if pw:
                g = blk["_g"].to_numpy(np.int64)
                G = side.prior.shape[1] - 1
                g = np.where((g >= 0) & (g < G), g, G)  # a group without a prior adds 0
            top_r = np.zeros(0, np.int64)
            top_s, top_i, top_k = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
            for n_chunk, ((c0, c1), ut) in enumerate(zip(chunks, UT, strict=True)):
                S = (L @ ut).toarray()
                if pw:
                    S += pw * side.prior[c0:c1][:, g].T
                sel = (gone_grp >= c0) & (gone_grp < c1)
                S[gone_row[sel], gone_grp[sel] - c0] = -np.inf
                if floor is not None:
                    S[S <= floor] = -np.inf
                if n_chunk == 0:
                    thr = _kth(S, k)
                else:  # the row's k-th best id so far (-inf while it has fewer than k)
                    cnt = np.bincount(top_r, minlength=m)
                    last = np.cumsum(cnt) - 1
                    thr = np.where(cnt >= k, top_s[np.maximum(last, 0)] if len(top_s) else -np.inf, -np.inf)[:, None]
                r, c = np.nonzero((S >= thr) & np.isfinite(S))
                if not len(r):
                    continue
                grp = c + c0
                size = np.minimum(side.sizes[grp], cap[r])
                start = np.repeat(side.starts[grp], size)
                offs = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
                e_r, e_s, e_i = np.repeat(r, size), np.repeat(S[r, c], size), side.members[start + offs]
                if len(x_key):
                    keys = e_r * span + e_i
                    at = np.minimum(np.searchsorted(x_key, keys), len(x_key) - 1)
                    fresh = x_key[at] != keys
                    e_r, e_s, e_i = e_r[fresh], e_s[fresh], e_i[fresh]
                top_r, top_s, top_i, top_k = _best(np.r_[top_r, e_r], np.r_[top_s, e_s], np.r_[top_i, e_i], k)
            if not len(top_r):
                continue
            res = {key: lid[top_r].astype(np.int32), COL_ITEM: top_i.astype(np.int32), COL_SCORE: top_s}
            if support:
                Lb = L.copy()
                Lb.data[:] = 1.0
                grp = side.group[np.searchsorted(ids, top_i)]
                res[NB_SUPPORT] = np.asarray(Lb[top_r].multiply(Ub[grp]).sum(axis=1)).ravel().astype(np.int64)
            res[COL_RANK] = top_k.astype(np.int32)
            yield pd.DataFrame(res)


def _csr(rows: list[Any], dim: int) -> Any:
    return _csr_arrays([r[IDX] for r in rows], [r[VAL] for r in rows], dim)


def _blocks(rows: DataFrame, key: str, n_blocks: int, extra: list[str], out: str) -> DataFrame:
    """One row per block (``key mod n_blocks``): ``out`` = the block's rows ``(k, indices, values, *extra)`` sorted by key."""
    rows = rows.withColumn("_b", F.pmod(F.col(key), F.lit(n_blocks)))
    return rows.groupBy("_b").agg(F.sort_array(F.collect_list(F.struct(F.col(key).alias("k"), IDX, VAL, *extra))).alias(out)).drop("_b")


def sparse_topk(
    left: DataFrame, items: DataFrame, k: int, dim: int, *, left_key: str = COL_USER, exclude: DataFrame | None = None,
    exclude_self: bool = False, prior: DataFrame | None = None, prior_weight: float = 0.0, min_score: float | None = None,
    support: bool = False, left_block: int = 1024, item_block: int = 4096, left_group: str | None = None,
    broadcast_mb: float = BROADCAST_MB,
) -> DataFrame:  # fmt: skip
    """Each left row's best ``k`` items by ``left . item (+ prior_weight * prior)``: ``(left_key, item_idx, score[, support], rank)``.

    ``left``: ``(left_key, indices, values)``; ``items``: ``(item_idx, indices,
    values)``; ``exclude``: ``(left_key, item_idx)`` pairs never returned (seen
    items); ``exclude_self`` drops ``item == key`` (item-item);  ``prior``:
    ``(item_idx, prior)``, or with ``left_group`` (a small non-negative int
    column of ``left``, null read as 0) ``(group, item_idx, prior)``: each
    left row adds its group's prior (0 where its group has none for the
    item); ``min_score`` keeps only larger scores;
    ``support`` adds the count of shared non-zero features.  Ties go to the
    smaller ``item_idx``.

    Two layouts, the same result.  When the item side (its sparse matrix and
    priors, about 12 bytes per non-zero plus 8 per prior) is at most
    ``broadcast_mb``, it is collected once and shipped with the task (Spark
    broadcasts large Python closures), and each task scores its left rows
    against every item block in turn, keeping a running top-k: only the
    answer, ``k`` rows per left row, leaves the task.  Above that, blocks of
    rows and items meet in one task per pair (a cross join), each pair's
    partial top-k is shuffled and one window makes the result exact; that
    shuffle is ``k`` rows per left row *per item block*, which is what made
    item-item content neighbours over a 105K-item catalogue spill gigabytes.
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
    irows = items.select(COL_ITEM, IDX, VAL)
    n_groups = 1
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
    pw, floor = float(prior_weight), min_score
    limit = min(broadcast_mb, CONNECT_BROADCAST_MB) if is_connect(left.sparkSession) else broadcast_mb
    nnz = int(irows.agg(F.sum(F.size(IDX))).first()[0] or 0)
    item_mb = (12 * nnz + 8 * n_items * n_groups) / 2**20
    if item_mb <= limit:
        log.info("top-%d over %d items (%.1f MB of item vectors): items shipped to every task", k, n_items, item_mb)
        side = _ItemSide(irows.orderBy(COL_ITEM).toPandas(), dim, bool(pw))
        parts = max(1, min(n_lb, 200))
        body = partial(_topk_task, side=side, k=k, key=left_key, exclude_self=exclude_self, pw=pw, floor=floor,
                       support=support, left_block=left_block, item_block=item_block)  # fmt: skip
        return lrows.repartition(parts).mapInPandas(body, f"{schema}, {COL_RANK} int")
    log.info("top-%d over %d items (%.1f MB of item vectors, over broadcast_mb %g): block pairs", k, n_items, item_mb, limit)
    u = _blocks(lrows, left_key, n_lb, ["_x", "_g"], "_l")
    i = _blocks(irows, COL_ITEM, n_ib, ["_p"], "_i")
    pairs = u.crossJoin(i).repartition(max(1, min(n_lb * n_ib, 200)))

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
        top = _top_columns(S, k) if n > k else np.tile(np.arange(n), (len(ls), 1))
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


def content_neighbors(
    vectors: DataFrame, dim: int, max_neighbors: int = 50, min_sim: float = 0.0, broadcast_mb: float = BROADCAST_MB
) -> DataFrame:
    """Item-item content neighbour table ``(a, b, sim, support)``: each item's ``max_neighbors`` most similar (cosine > ``min_sim``)."""
    top = sparse_topk(
        vectors.withColumnRenamed(COL_ITEM, NB_A), vectors, max_neighbors, dim, left_key=NB_A,
        exclude_self=True, min_score=min_sim, support=True, broadcast_mb=broadcast_mb,
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
