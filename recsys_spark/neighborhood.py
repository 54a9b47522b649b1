"""User- and item-based collaborative filtering with partitioned Spark joins.

Similarities are computed from co-rating statistics accumulated per pair in
one self-join on the shared key (users for item-item, items for user-user),
never as a dense matrix and never on the driver.  For each pair ``(a, b)``
over its co-raters ``C`` with transformed ratings ``x``, ``y``:

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
similarity; ``pred = base(u, i) + sum(sim * (r_uj - base(u, j))) / sum(sim)``
with ``base`` = 0 (``centering="none"``), the neighbour's mean
(``"mean"``), or the bias baseline (``"baseline"``).  When no neighbour
qualifies the bias baseline answers (``source`` says which part did).

Top-N: unseen candidates are scored by the summed similarity to the items the
user rated (item-based), or by the similarity-weighted ratings of the user's
neighbours (user-based), then ranked in Spark.
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
    COL_PREDICTION,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_USER,
)
from recsys_spark.split import hash_uniform

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "vector_cosine", "pearson", "adjusted_cosine", "pearson_baseline", "jaccard")
KERNELS = ("join", "blocks")
A, B, SIM, SUPPORT = "a", "b", "sim", "support"


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


STATS = ("support", "sxy", "sxx", "syy", "sx", "sy")
STATS_SCHEMA = "a int, b int, support long, sxy double, sxx double, syy double, sx double, sy double"


def block_pair_stats(keys: np.ndarray, entities: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Co-rating statistics of every entity pair ``a < b`` within one block of keys (scipy).

    With ``X`` the keys x entities matrix of ``x`` and ``B`` its indicator,
    ``support = B'B``, ``sxy = X'X``, ``sxx = (X*X)'B``, ``sx = X'B`` (and
    ``syy``/``sy`` the transposes), read at the co-rated pairs of the upper
    triangle.  Pure numpy/scipy: the Spark kernel runs it per block and the
    single-process reference runs it once on everything.
    """
    from scipy import sparse

    ents, ej = np.unique(entities, return_inverse=True)  # sorted: local a < b <=> global a < b
    _, ki = np.unique(keys, return_inverse=True)
    shape = (int(ki.max()) + 1 if len(ki) else 0, len(ents))
    X = sparse.csr_matrix((x.astype(np.float64), (ki, ej)), shape=shape)
    Bm = sparse.csr_matrix((np.ones(len(x)), (ki, ej)), shape=shape)
    co = sparse.triu((Bm.T @ Bm).tocsr(), k=1).tocoo()
    rows, cols = co.row, co.col

    def at(m: Any, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.asarray(m.tocsr()[r, c]).ravel() if len(r) else np.zeros(0)

    xt = X.T.tocsr()
    sxx_b, sx_b = (X.multiply(X)).T.tocsr() @ Bm, xt @ Bm
    return {
        A: ents[rows].astype(np.int32), B: ents[cols].astype(np.int32), "support": co.data.astype(np.int64),
        "sxy": at(xt @ X, rows, cols), "sxx": at(sxx_b, rows, cols), "syy": at(sxx_b, cols, rows),
        "sx": at(sx_b, rows, cols), "sy": at(sx_b, cols, rows),
    }  # fmt: skip


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
        left = t.select("_k", F.pmod(F.xxhash64("_e"), F.col("_ns")).cast("int").alias("_s"), F.col("_e").alias(A), F.col("_x").alias("_xa"))
        right = t.select("_k", F.explode(F.sequence(F.lit(0), F.col("_ns") - 1)).alias("_s"), F.col("_e").alias(B), F.col("_x").alias("_xb"))
        pairs = left.join(right, ["_k", "_s"])
    else:
        left = t.select("_k", F.col("_e").alias(A), F.col("_x").alias("_xa"))
        right = t.select("_k", F.col("_e").alias(B), F.col("_x").alias("_xb"))
        pairs = left.join(right, "_k")
    return pairs.where(F.col(A) < F.col(B)).groupBy(A, B).agg(
        F.count("*").alias("support"),
        F.sum(F.col("_xa") * F.col("_xb")).alias("sxy"),
        F.sum(F.col("_xa") * F.col("_xa")).alias("sxx"),
        F.sum(F.col("_xb") * F.col("_xb")).alias("syy"),
        F.sum("_xa").alias("sx"),
        F.sum("_xb").alias("sy"),
    )


def _stats_blocks(t: DataFrame, n_blocks: int) -> DataFrame:
    """The fast kernel: keys hashed into blocks, each block's statistics by sparse products in Python.

    Every pair's partial statistics leave a block already summed over the
    block's keys; one shuffle sums them across blocks.
    """

    def kernel(pdf: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(block_pair_stats(pdf["_k"].to_numpy(), pdf["_e"].to_numpy(), pdf["_x"].to_numpy()))

    blocks = t.withColumn("_blk", F.pmod(F.xxhash64(F.lit(7), "_k"), F.lit(n_blocks)))
    partial = blocks.groupBy("_blk").applyInPandas(kernel, STATS_SCHEMA)
    return partial.groupBy(A, B).agg(*[F.sum(c).alias(c) for c in STATS])


def similarities(
    ratings: DataFrame, *, similarity: str = "pearson_baseline", user_based: bool = False,
    shrinkage: float = 100.0, min_support: int = 1, cap: int | None = None, seed: int = 42,
    max_neighbors: int | None = None, threshold: float | None = None, base: BiasTableModel | None = None,
    kernel: str = "join", salt_threshold: int | None = None, block_rows: int = 200_000,
) -> DataFrame:  # fmt: skip
    """The neighbour table ``(a, b, sim, support)``, both directions, top ``max_neighbors`` per ``a``.

    ``a``/``b`` are item indices (item-item) or user indices (user-user).
    ``kernel="join"`` is the reference (partitioned self-join);
    ``kernel="blocks"`` computes the same statistics with scipy sparse
    products per block of about ``block_rows`` ratings.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    key, entity = (COL_ITEM, COL_USER) if user_based else (COL_USER, COL_ITEM)
    t = _transformed(ratings, similarity, key, entity, base)
    if cap is not None:
        w = Window.partitionBy("_k").orderBy(hash_uniform(seed, "_k", "_e"), "_e")
        t = t.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= cap).drop("_r")
    t = t.persist(StorageLevel.MEMORY_AND_DISK)
    if kernel == "join":
        stats = _stats_join(t, salt_threshold)
    else:
        n_blocks = max(t.sparkSession.sparkContext.defaultParallelism, -(-t.count() // block_rows))
        stats = _stats_blocks(t, n_blocks)
    stats = stats.where(F.col(SUPPORT) >= min_support)
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
        return r.join(self.base.user_bias, COL_USER).join(self.base.item_bias, COL_ITEM).select(
            COL_USER, COL_ITEM, COL_RATING, (F.lit(self.base.mu) + F.col(B_U) + F.col(B_I)).alias("_c")
        )

    def predict(self, pairs: DataFrame) -> DataFrame:
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
        fallback = self.base.predict(target).select(
            COL_USER, COL_ITEM, F.col(COL_PREDICTION).alias("_fb"), F.col(COL_SOURCE).alias("_fbs")
        )
        out = target.join(agg, [COL_USER, COL_ITEM], "left").join(base_t, [COL_USER, COL_ITEM], "left").join(
            fallback, [COL_USER, COL_ITEM], "left"
        )
        min_k = self.params["min_k"]
        use = F.col("n_neighbors").isNotNull() & (F.col("n_neighbors") >= min_k) & F.col("_t").isNotNull()
        knn = F.coalesce(F.col("_t"), F.lit(0.0)) + F.col("_num") / (F.col("_den") + F.lit(float(self.params.get("damping", 0.0))))
        pred = F.when(use, clip(knn, self.scale)).otherwise(F.col("_fb"))
        source = F.when(use, F.lit("knn")).otherwise(F.col("_fbs"))
        res = pairs.select(COL_USER, COL_ITEM).join(
            out.select(COL_USER, COL_ITEM, pred.alias(COL_PREDICTION), source.alias(COL_SOURCE)), [COL_USER, COL_ITEM], "left"
        )
        return as_predictions(res, self.name)

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
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
    salt_threshold: int | None = None  # join kernel: split keys with more rows over salts
    block_rows: int = 200_000  # blocks kernel: ratings per block
    neighbors: Literal["exact", "lsh"] = "exact"  # lsh: approximate (jaccard / vector_cosine only)
    num_hash_tables: int = 8
    bucket_length: float | None = None
    min_sim: float = 0.05  # lsh: the join threshold
    centering: Literal["none", "mean", "baseline"] = "baseline"
    damping: float = 0.0
    amplification: float = 1.0
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
        neighbors = neighbors.localCheckpoint()
        params = {
            "name": self.name, "user_based": self.user_based, "k": self.k, "min_k": self.min_k,
            "centering": self.centering, "similarity": self.similarity,
            "damping": self.damping, "amplification": self.amplification,
        }  # fmt: skip
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
            block_rows=self.block_rows,
        )  # fmt: skip
