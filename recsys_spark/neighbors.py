"""User- and item-based collaborative filtering with partitioned Spark joins.

Similarities are computed from co-rating statistics per pair, never as a
dense matrix and never on the driver, by one of two kernels that give the
same table:

* ``kernel="join"`` (the reference): one self-join on the shared key (users
  for item-item, items for user-user), statistics summed per pair by a
  group-by; ``salt_threshold`` spreads the pairs of heavy keys over salts.
* ``kernel="blocks"``: an entity-block join; each task holds whole columns of
  two entity blocks and computes their pairs with scipy sparse products
  (:func:`block_pair_stats`), finalises them and keeps a partial top-k, so
  only candidates leave the task.  Tests check it against the join.

For each pair ``(a, b)`` over its co-raters ``C`` with transformed ratings
``x``, ``y``:

======================  ====================================================
``cosine``              sum(xy) / sqrt(sum(x^2) sum(y^2)), raw ratings
``vector_cosine``       cosine of the whole rating vectors (unrated = 0):
                        norms over all ratings, not only co-rated ones;
                        the one LSH approximates (``recsys_spark.lsh``)
``pearson``             Pearson correlation over ``C`` (means over ``C``)
``adjusted_cosine``     cosine of ratings centred by the *other* side's mean
                        (for item-item: each user's mean)
``pearson_baseline``    cosine of residuals ``r - (mu + b_u + b_i)`` of the
                        bias baseline (Koren's baseline-centred Pearson)
``jaccard``             |C| / (n_a + n_b - |C|), for implicit data
======================  ====================================================

Shrinkage (significance weighting) multiplies by ``(|C| - 1) / (|C| - 1 +
shrinkage)``; pairs with fewer than ``min_support`` co-raters are dropped.
The quadratic blow-up from heavy users (item-item) / blockbuster items
(user-user) is bounded by ``cap``: each key contributes at most ``cap``
ratings to pair generation, chosen deterministically by a seeded hash.  Each
entity keeps its ``max_neighbors`` most similar neighbours (window inside
partitions); ``threshold`` drops weaker neighbours.

Prediction for ``(u, i)`` (item-based; user-based swaps the roles): among
the neighbours of ``i`` that ``u`` rated, the ``k`` most similar with positive
similarity; ``pred = base(u, i) + sum(sim * (r_uj - base(u, j))) / (sum(sim)
+ damping)`` with ``base`` = 0 (``centering="none"``), the neighbour's mean
(``"mean"``), or the bias baseline (``"baseline"``); ``damping`` pulls
predictions resting on few, weak neighbours towards ``base``.  When no
neighbour qualifies the bias baseline answers (``source`` says which part
did); ``predict_with_confidence`` adds ``n_neighbors`` and ``sim_sum``.
``neighbors="lsh"`` takes the table from :mod:`recsys_spark.lsh` instead.

Top-N: unseen candidates are scored by the summed similarity to the items the
user rated (item-based), or by the similarity-weighted ratings of the user's
neighbours (user-based), over every positive similarity in the table.  Both
are sparse products (``X @ S``, ``S @ R``) computed in blocks by
:mod:`recsys_spark.sparse_topn` (``recommend_kernel="blocks"``); the
``"join"`` kernel (a join per term and a group-by) is the reference, and
``"auto"`` (the default) takes the join below ``BLOCKS_FROM`` neighbour pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.baselines import B_I, B_U, BiasBaseline, BiasTableModel
from recsys_spark.lsh import lsh_similarities
from recsys_spark.recommender import (
    Recommender,
    RecommenderModel,
    Scale,
    as_predictions,
    clip,
    rank_candidates,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_MODEL,
    COL_PREDICTION,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_USER,
    NB_A,
    NB_B,
    NB_SIM,
    NB_SUPPORT,
    NEIGHBORS_DDL,
)
from recsys_spark.split import hash_uniform

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "vector_cosine", "pearson", "adjusted_cosine", "pearson_baseline", "jaccard")
KERNELS = ("join", "blocks")
# top-N by sparse products in blocks (recsys_spark.sparse_topn) from this many neighbour pairs: below,
# the join's single job costs less than the blocks' counts and cartesian product (all users' top-10,
# local[2]: 996 ML-100K ratings, 13K item pairs: join 0.6 s, blocks 1.6 s; ML-100K u1, 1.7M item /
# 0.8M user pairs: join 5.6 / 13.9 s, blocks 3.1 / 2.5 s)
BLOCKS_FROM = 100_000
A, B, SIM, SUPPORT = NB_A, NB_B, NB_SIM, NB_SUPPORT


def _transformed(ratings: DataFrame, similarity: str, key: str, entity: str, base: BiasTableModel | None) -> DataFrame:
    """(key, entity, x): the value each rating contributes to the pair statistics."""
    r = ratings.select(COL_USER, COL_ITEM, COL_RATING)
    if similarity in ("cosine", "vector_cosine", "pearson"):
        x = F.col(COL_RATING)
    elif similarity == "jaccard":
        x = F.lit(1.0)
    elif similarity == "adjusted_cosine":
        r = r.join(r.groupBy(key).agg(F.avg(COL_RATING).alias("_m")), key)
        x = F.col(COL_RATING) - F.col("_m")
    elif similarity == "pearson_baseline":
        assert base is not None
        r = r.join(base.user_bias, COL_USER).join(base.item_bias, COL_ITEM)
        x = F.col(COL_RATING) - F.lit(base.mu) - F.col(B_U) - F.col(B_I)
    else:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    return r.select(F.col(key).alias("_k"), F.col(entity).alias("_e"), x.alias("_x"))




def block_pair_stats(
    keys_p: np.ndarray, ents_p: np.ndarray, x_p: np.ndarray,
    keys_q: np.ndarray, ents_q: np.ndarray, x_q: np.ndarray, same: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Co-rating statistics of every co-rated pair ``a`` in block p, ``b`` in block q (scipy).

    With ``Xp``/``Xq`` the keys x entities matrices of ``x`` and ``Bp``/``Bq``
    their indicators: ``support = Bp'Bq``, ``sxy = Xp'Xq``, ``sxx =
    (Xp*Xp)'Bq``, ``syy = Bp'(Xq*Xq)``, ``sx = Xp'Bq``, ``sy = Bp'Xq``, read at
    the co-rated pairs; ``same`` (p is q) keeps ``a < b`` only.  Also returns
    each entity's rating count and vector norm (``n_a``/``n_b``,
    ``norm_a``/``norm_b``), which need the whole column: a block holds it.
    Pure numpy/scipy, so the single-process reference runs it on everything.
    """
    from scipy import sparse

    kk = np.unique(np.concatenate([keys_p, keys_q]))

    def matrices(keys: np.ndarray, ents: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, Any, Any]:
        uniq, ej = np.unique(ents, return_inverse=True)  # sorted: local order = global order
        ki = np.searchsorted(kk, keys)
        shape = (len(kk), len(uniq))
        xm = sparse.csc_matrix((x.astype(np.float64), (ki, ej)), shape=shape)
        bm = sparse.csc_matrix((np.ones(len(x)), (ki, ej)), shape=shape)
        return uniq, xm, bm

    up, xp, bp = matrices(keys_p, ents_p, x_p)
    uq, xq, bq = (up, xp, bp) if same else matrices(keys_q, ents_q, x_q)
    co = (bp.T @ bq).tocsr()
    if same:
        co = sparse.triu(co, k=1).tocsr()
    co.sum_duplicates()  # canonical: sorted indices, so row-major linear keys are sorted
    r = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    c = co.indices
    ncol = co.shape[1]
    keys_co = r.astype(np.int64) * ncol + c

    def at(m: Any) -> np.ndarray:
        """``m``'s values at the co-rated pairs (a product drops the zeros it computes)."""
        m = m.tocsr()
        m.sum_duplicates()
        keys_m = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * ncol + m.indices
        pos = np.minimum(np.searchsorted(keys_m, keys_co), max(len(keys_m) - 1, 0))
        out = np.zeros(len(keys_co))
        if len(keys_m):
            hit = keys_m[pos] == keys_co
            out[hit] = m.data[pos[hit]]
        return out

    xpt, bpt = xp.T.tocsr(), bp.T.tocsr()
    n_p, norm_p = np.diff(xp.indptr), np.sqrt(np.asarray(xp.multiply(xp).sum(axis=0)).ravel())
    n_q, norm_q = np.diff(xq.indptr), np.sqrt(np.asarray(xq.multiply(xq).sum(axis=0)).ravel())
    return {
        A: up[r].astype(np.int32), B: uq[c].astype(np.int32), "support": np.rint(co.data).astype(np.int64),
        "sxy": at(xpt @ xq), "sxx": at(xp.multiply(xp).T.tocsr() @ bq), "syy": at(bpt @ xq.multiply(xq)),
        "sx": at(xpt @ bq), "sy": at(bpt @ xq),
        "n_a": n_p[r], "n_b": n_q[c], "norm_a": norm_p[r], "norm_b": norm_q[c],
    }  # fmt: skip


def finalize_stats(s: dict[str, np.ndarray], similarity: str, shrinkage: float, min_support: int) -> dict[str, np.ndarray]:
    """numpy twin of the Spark finalisation in :func:`similarities`: (a, b, sim, support) one way."""
    n = s["support"].astype(np.float64)
    keep = s["support"] >= min_support
    with np.errstate(divide="ignore", invalid="ignore"):
        if similarity == "pearson":
            num = n * s["sxy"] - s["sx"] * s["sy"]
            den = np.sqrt((n * s["sxx"] - s["sx"] ** 2) * (n * s["syy"] - s["sy"] ** 2))
        elif similarity == "jaccard":
            num, den = n, s["n_a"] + s["n_b"] - n
        elif similarity == "vector_cosine":
            num, den = s["sxy"], s["norm_a"] * s["norm_b"]
        else:
            num, den = s["sxy"], np.sqrt(s["sxx"] * s["syy"])
        sim = np.where(den > 1e-12, num / den, 0.0)
    if shrinkage > 0 and similarity != "jaccard":
        sim = sim * (n - 1) / (n - 1 + shrinkage)
    return {A: s[A][keep], B: s[B][keep], SIM: sim[keep], SUPPORT: s["support"][keep]}


def top_k_per_a(a: np.ndarray, b: np.ndarray, sim: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of each ``a``'s ``k`` best rows (sim descending, then b ascending), as the Spark window."""
    if k is None or len(a) == 0:
        return np.arange(len(a))
    order = np.lexsort((b, -sim, a))
    sa = a[order]
    starts = np.r_[0, np.flatnonzero(sa[1:] != sa[:-1]) + 1]
    rank = np.arange(len(sa)) - np.repeat(starts, np.diff(np.r_[starts, len(sa)]))
    return order[rank < k]


def both_directions(t: dict[str, np.ndarray], threshold: float | None, k: int | None) -> dict[str, np.ndarray]:
    """One-way pairs -> (a, b) and (b, a), thresholded, each side's top ``k``."""
    out = {A: np.concatenate([t[A], t[B]]), B: np.concatenate([t[B], t[A]]),
           SIM: np.concatenate([t[SIM], t[SIM]]), SUPPORT: np.concatenate([t[SUPPORT], t[SUPPORT]])}  # fmt: skip
    if threshold is not None:
        keep = out[SIM] >= threshold
        out = {c: v[keep] for c, v in out.items()}
    idx = top_k_per_a(out[A], out[B], out[SIM], k)
    return {c: v[idx] for c, v in out.items()}


def _cap(df: DataFrame, key: str, entity: str, cap: int, seed: int) -> DataFrame:
    """At most ``cap`` rows per ``key``: those with the smallest seeded hash of (key, entity)."""
    w = Window.partitionBy(key).orderBy(hash_uniform(seed, key, entity), entity)
    return df.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= cap).drop("_r")


def cap_ratings(ratings: DataFrame, cap: int, seed: int = 42, user_based: bool = False) -> DataFrame:
    """The ratings :func:`similarities` pairs up under ``cap`` (same rows, same seed)."""
    key, entity = (COL_ITEM, COL_USER) if user_based else (COL_USER, COL_ITEM)
    return _cap(ratings, key, entity, cap, seed)


def _stats_join(t: DataFrame, salt_threshold: int | None) -> DataFrame:
    """The reference: one self-join on the key, statistics summed per pair.

    ``salt_threshold`` splits each key with more than that many rows over
    ``ceil(n / salt_threshold)`` salts: the left side takes one salt per row,
    the right side is replicated to every salt of its key, so each pair is
    still generated exactly once but a heavy key's pairs spread over tasks.
    """
    if salt_threshold:
        n = F.count("*").over(Window.partitionBy("_k"))
        t = t.withColumn("_ns", F.greatest(F.lit(1), F.ceil(n / F.lit(salt_threshold))).cast("int"))
        salt = F.pmod(F.xxhash64("_e"), F.col("_ns")).cast("int").alias("_s")
        left = t.select("_k", salt, F.col("_e").alias(A), F.col("_x").alias("_xa"))
        right = t.select(
            "_k", F.explode(F.sequence(F.lit(0), F.col("_ns") - 1)).alias("_s"), F.col("_e").alias(B), F.col("_x").alias("_xb")
        )
        pairs = left.join(right, ["_k", "_s"])
    else:
        left = t.select("_k", F.col("_e").alias(A), F.col("_x").alias("_xa"))
        right = t.select("_k", F.col("_e").alias(B), F.col("_x").alias("_xb"))
        pairs = left.join(right, "_k")
    return (
        pairs.where(F.col(A) < F.col(B))
        .groupBy(A, B)
        .agg(
            F.count("*").alias("support"),
            F.sum(F.col("_xa") * F.col("_xb")).alias("sxy"),
            F.sum(F.col("_xa") * F.col("_xa")).alias("sxx"),
            F.sum(F.col("_xb") * F.col("_xb")).alias("syy"),
            F.sum("_xa").alias("sx"),
            F.sum("_xb").alias("sy"),
        )
    )


def to_block_pairs(t: DataFrame, block_col: str, n_blocks: int, cols: list[str]) -> DataFrame:
    """Each row of ``t`` once for every block pair ``(_p, _q)``, ``_p <= _q``, its block ``block_col`` is in.

    A task grouped by ``(_p, _q)`` then holds whole columns of both blocks.
    """
    other = F.explode(F.sequence(F.lit(0), F.lit(n_blocks - 1))).alias("_o")
    rep = t.select(*cols, F.col(block_col).alias("_b"), other)
    return rep.select(*cols, F.least("_b", "_o").alias("_p"), F.greatest("_b", "_o").alias("_q"))


def _table_blocks(
    t: DataFrame, n_blocks: int, similarity: str, shrinkage: float, min_support: int,
    threshold: float | None, max_neighbors: int | None,
) -> DataFrame:  # fmt: skip
    """The fast kernel: an entity-block join, each block pair computed by sparse products in Python.

    Entities are split into ``n_blocks`` blocks (``entity mod n_blocks``);
    every rating is sent to the ``n_blocks`` block pairs ``(p, q)``, ``p <= q``,
    its block takes part in.  A task holds whole columns of both blocks, so it
    computes each of its pairs completely (no partial sums to shuffle),
    finalises the similarity and keeps a partial top-k per entity; one window
    over at most ``n_blocks * k`` candidates per entity makes it exact.
    """

    def kernel(pdf: pd.DataFrame) -> pd.DataFrame:
        p, q = int(pdf["_p"].iat[0]), int(pdf["_q"].iat[0])
        blk = pdf["_e"].to_numpy() % n_blocks
        mp, mq = blk == p, blk == q
        cols = [pdf[c].to_numpy() for c in ("_k", "_e", "_x")]
        stats = block_pair_stats(*[c[mp] for c in cols], *[c[mq] for c in cols], same=p == q)
        one_way = finalize_stats(stats, similarity, shrinkage, min_support)
        return pd.DataFrame(both_directions(one_way, threshold, max_neighbors))

    t = t.withColumn("_b", F.pmod(F.col("_e"), F.lit(n_blocks)).cast("int"))
    rep = to_block_pairs(t, "_b", n_blocks, ["_k", "_e", "_x"])
    table = rep.groupBy("_p", "_q").applyInPandas(kernel, NEIGHBORS_DDL)
    if max_neighbors is not None and n_blocks > 1:
        w = Window.partitionBy(A).orderBy(F.desc(SIM), F.asc(B))
        table = table.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= max_neighbors).drop("_r")
    return table


def similarities(
    ratings: DataFrame, *, similarity: str = "pearson_baseline", user_based: bool = False,
    shrinkage: float = 100.0, min_support: int = 1, cap: int | None = None, seed: int = 42,
    max_neighbors: int | None = None, threshold: float | None = None, base: BiasTableModel | None = None,
    kernel: str = "join", salt_threshold: int | None = None, block_entities: int = 3000, n_blocks: int | None = None,
) -> DataFrame:  # fmt: skip
    """The neighbour table ``(a, b, sim, support)``, both directions, top ``max_neighbors`` per ``a``.

    ``a``/``b`` are item indices (item-item) or user indices (user-user).
    ``kernel="join"`` is the reference (partitioned self-join);
    ``kernel="blocks"`` computes the same table with scipy sparse products
    per pair of entity blocks of about ``block_entities`` entities each
    (``n_blocks`` overrides the count).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    key, entity = (COL_ITEM, COL_USER) if user_based else (COL_USER, COL_ITEM)
    t = _transformed(ratings, similarity, key, entity, base)
    if cap is not None:
        t = _cap(t, "_k", "_e", cap, seed)
    t = t.persist(StorageLevel.MEMORY_AND_DISK)
    if kernel == "blocks":
        if n_blocks is None:
            n_ent = t.agg(F.max("_e")).first()[0]
            n_blocks = max(2, -(-((n_ent or 0) + 1) // block_entities))
        return _table_blocks(t, n_blocks, similarity, shrinkage, min_support, threshold, max_neighbors)
    stats = _stats_join(t, salt_threshold).where(F.col(SUPPORT) >= min_support)
    n = F.col(SUPPORT)
    if similarity == "pearson":
        num = n * F.col("sxy") - F.col("sx") * F.col("sy")
        den = F.sqrt((n * F.col("sxx") - F.col("sx") ** 2) * (n * F.col("syy") - F.col("sy") ** 2))
    elif similarity == "jaccard":
        counts = t.groupBy("_e").agg(F.count("*").alias("_n"))
        stats = stats.join(counts.select(F.col("_e").alias(A), F.col("_n").alias("_na")), A).join(
            counts.select(F.col("_e").alias(B), F.col("_n").alias("_nb")), B
        )
        num = n.cast("double")
        den = F.col("_na") + F.col("_nb") - n
    elif similarity == "vector_cosine":  # missing ratings as zeros: norms over all of each entity's ratings
        norms = t.groupBy("_e").agg(F.sqrt(F.sum(F.col("_x") ** 2)).alias("_n"))
        stats = stats.join(norms.select(F.col("_e").alias(A), F.col("_n").alias("_na")), A).join(
            norms.select(F.col("_e").alias(B), F.col("_n").alias("_nb")), B
        )
        num = F.col("sxy")
        den = F.col("_na") * F.col("_nb")
    else:  # cosine of the transformed values
        num = F.col("sxy")
        den = F.sqrt(F.col("sxx") * F.col("syy"))
    # rounding can leave a pearson denominator a hair above 0 for constant vectors
    sim = F.when(den > 1e-12, num / den).otherwise(F.lit(0.0))
    if shrinkage > 0 and similarity != "jaccard":
        sim = sim * (n - 1) / (n - 1 + shrinkage)
    one_way = stats.select(A, B, sim.alias(SIM), SUPPORT)
    both = one_way.unionByName(one_way.select(F.col(B).alias(A), F.col(A).alias(B), SIM, SUPPORT))
    if threshold is not None:
        both = both.where(F.col(SIM) >= threshold)
    if max_neighbors is not None:
        w = Window.partitionBy(A).orderBy(F.desc(SIM), F.asc(B))
        both = both.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= max_neighbors).drop("_r")
    return both


class KNNModel(RecommenderModel):
    STATE_KEYS: ClassVar[tuple[str, ...]] = ("neighbors", "ratings", "user_bias", "item_bias", "item_score", "seen")

    def __init__(self, name: str, params: dict[str, Any], neighbors: DataFrame, ratings: DataFrame, base: BiasTableModel) -> None:
        self.name = name
        self.params = params
        self.neighbors = neighbors  # (a, b, sim, support)
        self.ratings = ratings  # training (user_idx, item_idx, rating)
        self.base = base

    @property
    def scale(self) -> Scale:
        return self.base.scale

    def _centred(self) -> DataFrame:
        """Training ratings with the centring term ``c`` subtracted in predictions."""
        r = self.ratings.select(COL_USER, COL_ITEM, COL_RATING)
        centering = self.params["centering"]
        if centering == "none":
            return r.withColumn("_c", F.lit(0.0))
        if centering == "mean":
            nb = COL_USER if self.params["user_based"] else COL_ITEM  # the neighbour's own mean
            return r.join(r.groupBy(nb).agg(F.avg(COL_RATING).alias("_c")), nb)
        return (
            r.join(self.base.user_bias, COL_USER)
            .join(self.base.item_bias, COL_ITEM)
            .select(COL_USER, COL_ITEM, COL_RATING, (F.lit(self.base.mu) + F.col(B_U) + F.col(B_I)).alias("_c"))
        )

    def predict_with_confidence(self, pairs: DataFrame) -> DataFrame:
        """The prediction contract plus ``n_neighbors`` (neighbours used) and ``sim_sum`` (their summed similarity).

        Both are 0 on a fallback.
        """
        user_based, k = self.params["user_based"], self.params["k"]
        target = pairs.select(COL_USER, COL_ITEM).dropDuplicates()
        r = self._centred()
        # the target's own centring term (mean / baseline of the target side)
        if self.params["centering"] == "mean":
            own = COL_USER if user_based else COL_ITEM
            means = self.ratings.groupBy(own).agg(F.avg(COL_RATING).alias("_t"))
            base_t = target.join(means, own, "left")
        elif self.params["centering"] == "baseline":
            base_t = self.base.predict(target).select(COL_USER, COL_ITEM, F.col(COL_PREDICTION).alias("_t"))
        else:
            base_t = target.withColumn("_t", F.lit(0.0))
        if user_based:  # neighbours of u who rated i
            cand = target.join(r.select(F.col(COL_USER).alias(B), COL_ITEM, COL_RATING, "_c"), COL_ITEM)
            cand = cand.join(self.neighbors.select(F.col(A).alias(COL_USER), B, SIM), [COL_USER, B])
        else:  # neighbours of i that u rated
            cand = target.join(r.select(COL_USER, F.col(COL_ITEM).alias(B), COL_RATING, "_c"), COL_USER)
            cand = cand.join(self.neighbors.select(F.col(A).alias(COL_ITEM), B, SIM), [COL_ITEM, B])
        cand = cand.where(F.col(SIM) > 0)
        if self.params.get("amplification", 1.0) != 1.0:
            cand = cand.withColumn(SIM, F.pow(F.col(SIM), F.lit(float(self.params["amplification"]))))
        w = Window.partitionBy(COL_USER, COL_ITEM).orderBy(F.desc(SIM), F.asc(B))
        top = cand.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= k)
        agg = top.groupBy(COL_USER, COL_ITEM).agg(
            F.sum(F.col(SIM) * (F.col(COL_RATING) - F.col("_c"))).alias("_num"),
            F.sum(SIM).alias("_den"),
            F.count("*").alias("n_neighbors"),
        )
        fallback = self.base.predict(target).select(COL_USER, COL_ITEM, F.col(COL_PREDICTION).alias("_fb"), F.col(COL_SOURCE).alias("_fbs"))
        out = (
            target.join(agg, [COL_USER, COL_ITEM], "left")
            .join(base_t, [COL_USER, COL_ITEM], "left")
            .join(fallback, [COL_USER, COL_ITEM], "left")
        )
        min_k = self.params["min_k"]
        use = F.col("n_neighbors").isNotNull() & (F.col("n_neighbors") >= min_k) & F.col("_t").isNotNull()
        knn = F.coalesce(F.col("_t"), F.lit(0.0)) + F.col("_num") / (F.col("_den") + F.lit(float(self.params.get("damping", 0.0))))
        pred = F.when(use, clip(knn, self.scale)).otherwise(F.col("_fb"))
        source = F.when(use, F.lit("knn")).otherwise(F.col("_fbs"))
        conf = [
            F.when(use, F.col("n_neighbors")).otherwise(F.lit(0)).cast("int").alias("n_neighbors"),
            F.when(use, F.col("_den")).otherwise(F.lit(0.0)).alias("sim_sum"),
        ]
        res = pairs.select(COL_USER, COL_ITEM).join(
            out.select(COL_USER, COL_ITEM, pred.alias(COL_PREDICTION), source.alias(COL_SOURCE), *conf), [COL_USER, COL_ITEM], "left"
        )
        typed = as_predictions(res, self.name).columns
        return res.withColumn(COL_MODEL, F.lit(self.name)).select(*typed, "n_neighbors", "sim_sum")

    def predict(self, pairs: DataFrame) -> DataFrame:
        return as_predictions(self.predict_with_confidence(pairs), self.name)

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        kernel = self.params.get("recommend_kernel", "auto")
        if kernel == "auto":  # the join's fixed cost is lower on small tables; loaded models without a count: blocks
            kernel = "join" if self.params.get("n_pairs", BLOCKS_FROM) < BLOCKS_FROM else "blocks"
        if kernel == "join":
            return self._recommend_join(users, k)
        from recsys_spark import sparse_topn as st

        u = users.select(COL_USER).distinct()
        r = self.ratings.select(COL_USER, COL_ITEM, COL_RATING)
        mine = u.join(r, COL_USER)
        nb = self.neighbors.where(F.col(SIM) > 0)
        if self.params["user_based"]:  # S @ R: the neighbours' ratings weighted by similarity
            left = u.join(nb.select(F.col(A).alias(COL_USER), B, SIM), COL_USER)
            left = left.select(F.col(COL_USER).alias(st.ROW), F.col(B).alias(st.MID), F.col(SIM).alias(st.W))
            right = r.select(F.col(COL_USER).alias(st.MID), F.col(COL_ITEM).alias(st.COL), F.col(COL_RATING).alias(st.V))
        else:  # X @ S: the similarities to the items the user rated, summed
            left = mine.select(F.col(COL_USER).alias(st.ROW), F.col(COL_ITEM).alias(st.MID), F.lit(1.0).alias(st.W))
            right = nb.select(F.col(A).alias(st.MID), F.col(B).alias(st.COL), F.col(SIM).alias(st.V))
        seen = mine.select(F.col(COL_USER).alias(st.ROW), F.col(COL_ITEM).alias(st.COL))
        cand = st.product_topk(left, right, seen, k)
        cand = cand.select(F.col(st.ROW).alias(COL_USER), F.col(st.COL).alias(COL_ITEM), COL_SCORE)
        return rank_candidates(cand, k, self.name)

    def _recommend_join(self, users: DataFrame, k: int) -> DataFrame:
        """The same top-N by a join per (rated item, neighbour) and a group-by: the reference."""
        u = users.select(COL_USER).distinct()
        r = self.ratings.select(COL_USER, COL_ITEM, COL_RATING)
        if self.params["user_based"]:  # items rated by the user's neighbours, weighted by similarity
            nb = u.join(self.neighbors.select(F.col(A).alias(COL_USER), B, SIM), COL_USER).where(F.col(SIM) > 0)
            cand = nb.join(r.select(F.col(COL_USER).alias(B), COL_ITEM, COL_RATING), B)
            scored = cand.groupBy(COL_USER, COL_ITEM).agg(F.sum(F.col(SIM) * F.col(COL_RATING)).alias(COL_SCORE))
        else:  # items similar to those the user rated
            mine = u.join(r, COL_USER).select(COL_USER, F.col(COL_ITEM).alias(A))
            cand = mine.join(self.neighbors.select(A, F.col(B).alias(COL_ITEM), SIM), A).where(F.col(SIM) > 0)
            scored = cand.groupBy(COL_USER, COL_ITEM).agg(F.sum(SIM).alias(COL_SCORE))
        unseen = scored.join(r.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM], "left_anti")
        return rank_candidates(unseen, k, self.name)

    def _state(self) -> dict[str, DataFrame]:
        base = self.base._state()
        return {"neighbors": self.neighbors, "ratings": self.ratings, **base}

    def _params(self) -> dict[str, Any]:
        return {"params": self.params, "base": self.base._params()}

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> KNNModel:
        base = BiasTableModel._from_state(params["base"], state)
        return cls(params["params"]["name"], params["params"], state["neighbors"], state["ratings"], base)


@dataclass
class KNN(Recommender):
    """Neighbourhood CF (see the module docstring).  ``user_based`` picks the direction."""

    user_based: bool = False
    similarity: Literal["cosine", "vector_cosine", "pearson", "adjusted_cosine", "pearson_baseline", "jaccard"] = "pearson_baseline"
    k: int = 40
    min_k: int = 1
    shrinkage: float = 100.0
    min_support: int = 1
    cap: int | None = None  # ratings per key used for pair generation (None: all)
    max_neighbors: int | None = None  # neighbours kept per entity (None: all)
    threshold: float | None = None
    kernel: Literal["join", "blocks"] = "join"
    recommend_kernel: Literal["auto", "blocks", "join"] = "auto"  # top-N: blocks from BLOCKS_FROM neighbour pairs, else the join
    salt_threshold: int | None = None  # join kernel: split keys with more rows over salts
    block_entities: int = 3000  # blocks kernel: entities per block
    neighbors: Literal["exact", "lsh"] = "exact"  # lsh: approximate (jaccard / vector_cosine only)
    num_hash_tables: int = 8
    bucket_length: float | None = None
    min_sim: float = 0.05  # lsh: the join threshold
    centering: Literal["none", "mean", "baseline"] = "baseline"
    damping: float = 0.0  # added to the denominator: pulls thin neighbourhoods towards the centring term
    amplification: float = 1.0  # case amplification: sim ** amplification (Breese et al.); 1 = off
    seed: int = 42
    reg_user: float = 15.0  # the bias baseline used for centring and fallback
    reg_item: float = 10.0
    scale: Scale = None  # type: ignore[assignment]
    name: str = "item_knn"

    def fit(self, train: DataFrame) -> KNNModel:
        self._check_train(train)
        self._check_params()
        ratings = train.select(COL_USER, COL_ITEM, COL_RATING).persist(StorageLevel.MEMORY_AND_DISK)
        base, neighbors = self.neighbor_table(ratings)
        neighbors = neighbors.transform(lineage.cut)
        params = {
            "name": self.name, "user_based": self.user_based, "k": self.k, "min_k": self.min_k,
            "centering": self.centering, "similarity": self.similarity,
            "damping": self.damping, "amplification": self.amplification, "recommend_kernel": self.recommend_kernel,
        }  # fmt: skip
        if self.recommend_kernel == "auto":
            params["n_pairs"] = neighbors.count()  # a scalar of the cut table: picks the top-N kernel
        return KNNModel(self.name, params, neighbors, ratings, base)

    def _check_params(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.centering not in ("none", "mean", "baseline"):
            raise ValueError(f"centering must be none, mean or baseline, got {self.centering!r}")
        if self.neighbors not in ("exact", "lsh"):
            raise ValueError(f"neighbors must be exact or lsh, got {self.neighbors!r}")
        if self.k < 1 or self.min_k < 1:
            raise ValueError("k and min_k must be >= 1")
        if self.recommend_kernel not in ("auto", "blocks", "join"):
            raise ValueError(f"recommend_kernel must be auto, blocks or join, got {self.recommend_kernel!r}")

    def neighbor_table(self, ratings: DataFrame) -> tuple[BiasTableModel, DataFrame]:
        """The bias baseline and the (lazy) neighbour table ``(a, b, sim, support)`` of ``ratings``."""
        base = BiasBaseline(reg_user=self.reg_user, reg_item=self.reg_item, scale=self.scale or Scale(), name=self.name).fit(ratings)
        if self.neighbors == "lsh":
            return base, lsh_similarities(
                ratings, similarity=self.similarity, user_based=self.user_based, num_hash_tables=self.num_hash_tables,
                bucket_length=self.bucket_length, min_sim=self.min_sim, shrinkage=self.shrinkage,
                min_support=self.min_support, max_neighbors=self.max_neighbors, seed=self.seed,
            )  # fmt: skip
        return base, similarities(
            ratings, similarity=self.similarity, user_based=self.user_based, shrinkage=self.shrinkage,
            min_support=self.min_support, cap=self.cap, seed=self.seed, max_neighbors=self.max_neighbors,
            threshold=self.threshold, base=base, kernel=self.kernel, salt_threshold=self.salt_threshold,
            block_entities=self.block_entities,
        )  # fmt: skip
