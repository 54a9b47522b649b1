"""EASE, RP3beta and SLIM: learned item-item weights, scored blockwise in Spark.

Fitting (each estimator): the interactions ``X`` of the training part
(binary, or the ratings for ``weighting="rating"``), the ``max_items`` most
rated items kept, the Gram matrix from Spark tiles
(:func:`~recsys_spark.itemitem.gram.gram`), the weights ``W`` from
:mod:`~recsys_spark.itemitem.solvers` (EASE and RP3beta on the driver, SLIM's
per-item regressions as Spark tasks), ``W`` stored as column slabs.

Scoring (:class:`ItemItemModel`): ``scores = X_users W``.  Users are grouped
in blocks and ``W`` in column slabs of ``item_block`` items (at most 16 MB
each, one per partition); a cartesian product of the two (Spark's
shuffle-replicate nested loop: the slabs are never shuffled or broadcast)
makes every (user block, slab) pair one task that multiplies the users'
sparse rows by the slab, masks their training items and keeps each user's
best ``k`` (ties kept); one window over the partial lists makes the top-N
exact, ties broken by the smaller ``item_idx``.  Users with no interaction
among the kept items get the popularity list; items outside the kept set
are never candidates (``info`` records how many there are).  Rating
predictions (``predict``) are the damped item means of the popularity
fallback, with ``source="popularity"``: these are top-N models.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.baselines import BiasTableModel, Popularity, PopularityRatings
from recsys_spark.itemitem import solvers
from recsys_spark.itemitem.gram import COL_POS, COL_X, KeptItems, check_weighting, gram, interactions, kept_items, with_positions
from recsys_spark.recommender import Recommender, RecommenderModel, Scale, as_topn, top_k_mask
from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_SCORE, COL_USER
from recsys_spark.spark import spark_context

log = logging.getLogger(__name__)

SLAB_DDL = "cb int, data binary"
# the largest column slab (one row): a 64 MB row made the JVM copy it into 128 MB buffers, which a
# 4 GB heap failed to allocate (OutOfMemoryError while the long tail's slabs were stored)
SLAB_BYTES = 16 << 20
SLAB_GROUP_BYTES = 256 << 20  # the largest broadcast of W's columns (see slabs_frame)
DOUBLE_BELOW = 4096  # kept items up to this count: the Gram and the solve in float64, above in float32


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def slab_width(n: int, item_block: int) -> int:
    return max(1, min(item_block, n, SLAB_BYTES // (4 * max(n, 1))))


def slabs_frame(spark: Any, w: np.ndarray, width: int) -> DataFrame:
    """``W``'s column slabs as ``(cb, data)`` rows: float32, C order, ``n x width`` (the last narrower), checkpointed.

    ``W`` travels to the executors in broadcasts of at most ``SLAB_GROUP_BYTES``
    (torrent pieces through the block manager, not inside task closures), each
    task cutting its slabs from one; each group is checkpointed to the
    executors' disks and its broadcast destroyed before the next is made.  A
    single broadcast of ``W`` (1.6 GB at 20,000 items) ran a 4 GB driver heap
    out of memory while the JVM cut it into pieces, and slabs kept in the heap
    (then 64 MB rows) did the same while scoring.
    """
    n_rows, n = w.shape
    n_cb = -(-n // width)
    per = max(1, SLAB_GROUP_BYTES // (4 * n_rows * width))  # slabs per broadcast
    sc = spark_context(spark, "the item-item models' weight slabs (broadcasts)")
    groups = []
    for lo in range(0, n_cb, per):
        hi = min(n_cb, lo + per)
        bc = sc.broadcast(np.ascontiguousarray(w[:, lo * width : hi * width], dtype=np.float32))

        def cut(batches, bc=bc, lo=lo):
            part = bc.value
            for pdf in batches:
                for cb in pdf["id"].to_numpy():  # one slab per Arrow batch: a batch's binary column stays small
                    j = (int(cb) - lo) * width
                    data = np.ascontiguousarray(part[:, j : j + width]).tobytes()
                    yield pd.DataFrame({"cb": [np.int32(cb)], "data": [data]})

        ids = spark.range(lo, hi, 1, numPartitions=hi - lo)  # one slab per partition: a scoring task reads one
        groups.append(lineage.cut(ids.mapInPandas(cut, SLAB_DDL), StorageLevel.DISK_ONLY))
        bc.destroy()
    slabs = groups[0]
    for g in groups[1:]:  # a union keeps every group's partitions: still one slab per partition
        slabs = slabs.unionByName(g)
    return slabs


class ItemItemModel(PopularityRatings, RecommenderModel):
    """Dense item-item weights over the kept items (see the module docstring)."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("positions", "slabs", "interactions", "user_bias", "item_bias", "item_score", "seen")
    # the slabs (rows of up to 16 MB) are on the executors' disks or in files: never cached in the heap
    STORED_KEYS: ClassVar[tuple[str, ...]] = ("slabs",)

    def __init__(
        self, name: str, info: dict[str, Any], positions: DataFrame, slabs: DataFrame, x: DataFrame, fallback: BiasTableModel,
    ) -> None:  # fmt: skip
        self.name = name
        self.info = info  # n (kept items), n_total, width, user_block, fit figures
        self.positions = positions  # (item_idx, pos)
        self.slabs = slabs  # (cb, data)
        self.x = x  # training (user_idx, item_idx, x)
        self.fallback = fallback  # popularity: cold users' lists and the rating predictions

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        want = users.select(COL_USER).distinct()
        xu = want.join(self.x, COL_USER).join(self.positions, COL_ITEM)
        lists = xu.groupBy(COL_USER).agg(F.sort_array(F.collect_list(F.struct(COL_POS, COL_X))).alias("_l"))
        lists = lists.select(COL_USER, F.col("_l." + COL_POS).alias("_p"), F.col("_l." + COL_X).alias("_x")).persist()
        n_known = lists.count()  # a scalar: sizes the user blocks
        cold = want.join(lists.select(COL_USER), COL_USER, "left_anti")
        cold_top = self.fallback.recommend(cold, k).withColumn("model", F.lit(self.name))
        if n_known == 0:
            return cold_top
        n, width = int(self.info["n"]), int(self.info["width"])
        n_ub = max(1, math.ceil(n_known / int(self.info.get("user_block", 8192))))
        blocks = (  # one user block per partition (an explicit count: adaptive execution keeps it)
            lists.withColumn("_ub", F.pmod(F.col(COL_USER), F.lit(n_ub)))
            .repartition(n_ub, "_ub")
            .groupBy("_ub")
            .agg(F.collect_list(F.struct(COL_USER, "_p", "_x")).alias("_u"))
        )
        # a cartesian product (no broadcast, no shuffle of the slabs): each task pairs one partition of
        # user blocks with one slab partition, reading the slab from the block manager
        pairs = blocks.hint("shuffle_replicate_nl").crossJoin(self.slabs)

        def score(batches):
            for pdf in batches:
                out = [_score_slab(us, int(cb), data, n, width, k) for us, cb, data in zip(pdf["_u"], pdf["cb"], pdf["data"], strict=True)]
                yield pd.concat(out) if out else pd.DataFrame({COL_USER: [], COL_POS: [], COL_SCORE: []})

        cand = pairs.select("_u", "cb", "data").mapInPandas(score, f"{COL_USER} int, {COL_POS} int, {COL_SCORE} double")
        cand = cand.join(F.broadcast(self.positions), COL_POS)
        w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
        top = as_topn(cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), self.name)
        return top.unionByName(cold_top)

    # -- persistence -------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        return {"positions": self.positions, "slabs": self.slabs, "interactions": self.x, **self.fallback._state()}

    def _params(self) -> dict[str, Any]:
        return {"name": self.name, "info": self.info, "fallback": self.fallback._params()}

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> ItemItemModel:
        fallback = BiasTableModel._from_state(params["fallback"], state)
        return cls(params["name"], params["info"], state["positions"], state["slabs"], state["interactions"], fallback)


def _score_slab(us: Any, cb: int, data: bytes, n: int, width: int, k: int) -> pd.DataFrame:
    """Candidates of one (user block, slab): the users' best ``k`` unseen positions in the slab, ties kept."""
    from scipy import sparse

    c0 = cb * width
    wcb = min(width, n - c0)
    slab = np.frombuffer(data, dtype=np.float32).reshape(n, wcb)
    uid = np.array([u[COL_USER] for u in us], dtype=np.int64)
    pos = [np.asarray(u["_p"], dtype=np.int64) for u in us]
    vals = [np.asarray(u["_x"], dtype=np.float64) for u in us]
    lens = np.array([len(p) for p in pos])
    indptr = np.r_[0, np.cumsum(lens)]
    allpos = np.concatenate(pos) if len(pos) else np.zeros(0, np.int64)
    xm = sparse.csr_matrix((np.concatenate(vals), allpos, indptr), shape=(len(uid), n))
    s = np.asarray(xm @ slab, dtype=np.float64)
    rows = np.repeat(np.arange(len(uid)), lens)
    own = (allpos >= c0) & (allpos < c0 + wcb)
    s[rows[own], allpos[own] - c0] = -np.inf  # the user's training items
    r, c = np.nonzero(top_k_mask(s, k))
    return pd.DataFrame({COL_USER: uid[r].astype(np.int32), COL_POS: (c + c0).astype(np.int32), COL_SCORE: s[r, c]})


@dataclass
class _DenseItemItem(Recommender):
    """What the three estimators share: the kept items, the Gram tiles, the slabs and the fallback."""

    max_items: int = 20000  # items with the most ratings kept in the dense matrices (4 n^2 bytes on the driver)
    gram_block: int = 2048  # positions per Gram tile
    item_block: int = 1024  # columns per scoring slab (capped at SLAB_BYTES)
    user_block: int = 8192  # users per scoring block: each (user block, slab) task copies one slab to Python
    scale: Scale = None  # type: ignore[assignment]
    name: str = "itemitem"

    def _check(self) -> None:
        """Settings errors, raised before any Spark work."""
        if self.max_items < 2 or self.gram_block < 1 or self.item_block < 1 or self.user_block < 1:
            raise ValueError(f"{self.name}: max_items >= 2 and positive block sizes needed")

    def _weights(self, x: DataFrame, xp: DataFrame, kept: KeptItems, dtype: type) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def _weighting(self) -> str:
        return "binary"

    def fit(self, train: DataFrame) -> ItemItemModel:
        self._check_train(train)
        self._check()
        t0 = time.perf_counter()
        x = interactions(train, self._weighting()).persist(StorageLevel.MEMORY_AND_DISK)
        kept = kept_items(x, self.max_items)
        if kept.n < 2:
            raise ValueError(f"{self.name}: needs at least 2 rated items, the training data has {kept.n}")
        xp = with_positions(x, kept).persist(StorageLevel.MEMORY_AND_DISK)
        dtype = np.float64 if kept.n <= DOUBLE_BELOW else np.float32
        w, info = self._weights(x, xp, kept, dtype)
        width = slab_width(kept.n, self.item_block)
        spark = train.sparkSession
        slabs = slabs_frame(spark, w, width)
        del w
        xp.unpersist()
        fallback = Popularity(kind="count", scale=self.scale or Scale(), name=self.name).fit(train)
        info.update({
            "n": kept.n, "n_total": kept.n_total, "items_not_scored": kept.n_total - kept.n, "width": width,
            "user_block": self.user_block, "dtype": np.dtype(dtype).name, "fit_s": round(time.perf_counter() - t0, 3),
            "driver_peak_rss_mb": round(_peak_rss_mb(), 1),
        })  # fmt: skip
        log.info("%s: %d items (%d not scored), fit %.1fs", self.name, kept.n, kept.n_total - kept.n, info["fit_s"])
        return ItemItemModel(self.name, info, kept.positions.transform(lineage.cut), slabs, x.select(COL_USER, COL_ITEM, COL_X), fallback)


@dataclass
class EASE(_DenseItemItem):
    """Embarrassingly shallow autoencoder (Steck 2019): ``W = I - P diag(P)^-1``, ``P = (X'X + l2_reg I)^-1``."""

    l2_reg: float = 500.0
    weighting: Literal["binary", "rating"] = "binary"
    name: str = "ease"

    def _weighting(self) -> str:
        return self.weighting

    def _check(self) -> None:
        super()._check()
        if self.l2_reg <= 0:
            raise ValueError(f"ease: l2_reg must be > 0, got {self.l2_reg}")
        check_weighting(self.weighting)

    def _weights(self, x, xp, kept, dtype):
        t = time.perf_counter()
        g = gram(xp, kept.n, self.gram_block, dtype=dtype)
        t_gram = time.perf_counter() - t
        t = time.perf_counter()
        w = solvers.ease(g, self.l2_reg)
        return w, {"gram_s": round(t_gram, 3), "solve_s": round(time.perf_counter() - t, 3)}


@dataclass
class RP3beta(_DenseItemItem):
    """The three-step random walk with popularity penalty (Paudel et al. 2017), rows pruned to ``neighbors``."""

    alpha: float = 1.0
    beta: float = 0.5
    neighbors: int | None = 200
    name: str = "rp3beta"

    def _check(self) -> None:
        super()._check()
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"rp3beta: alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.neighbors is not None and self.neighbors < 1:
            raise ValueError(f"rp3beta: neighbors must be >= 1 or none, got {self.neighbors}")

    def _weights(self, x, xp, kept, dtype):
        deg_u = x.groupBy(COL_USER).agg(F.count("*").alias("_du"))
        xw = xp.join(deg_u, COL_USER).withColumn("_w", F.pow(F.col("_du").cast("double"), F.lit(-float(self.alpha))))
        t = time.perf_counter()
        g = gram(xw, kept.n, self.gram_block, user_weight="_w", dtype=dtype)
        t_gram = time.perf_counter() - t
        t = time.perf_counter()
        w = solvers.rp3beta(g, kept.counts, self.alpha, self.beta, self.neighbors)
        return w, {"gram_s": round(t_gram, 3), "solve_s": round(time.perf_counter() - t, 3)}


@dataclass
class SLIM(_DenseItemItem):
    """Sparse linear method (Ning & Karypis 2011): a non-negative elastic net per item, on its ``neighbors`` most co-rated items.

    The columns are fitted as independent Spark tasks (``columns_per_task``
    each), every task reading the Gram matrix from one broadcast.
    """

    l1: float = 1.0
    l2: float = 50.0
    neighbors: int = 100
    max_iter: int = 50
    tol: float = 1e-5
    columns_per_task: int = 256
    weighting: Literal["binary", "rating"] = "binary"
    name: str = "slim"

    def _weighting(self) -> str:
        return self.weighting

    def _check(self) -> None:
        super()._check()
        if self.neighbors < 1 or self.columns_per_task < 1 or self.max_iter < 1:
            raise ValueError("slim: neighbors, columns_per_task and max_iter must be >= 1")
        if self.l1 < 0 or self.l2 < 0 or (self.l1 == 0 and self.l2 == 0):
            raise ValueError(f"slim: SLIM needs l1, l2 >= 0 and not both 0; got {self.l1}, {self.l2}")
        check_weighting(self.weighting)

    def _weights(self, x, xp, kept, dtype):
        t = time.perf_counter()
        g = gram(xp, kept.n, self.gram_block, dtype=dtype)
        t_gram = time.perf_counter() - t
        spark = x.sparkSession
        bc = spark_context(spark, f"{self.name} (a broadcast Gram matrix)").broadcast(g)
        l1, l2, size, max_iter, tol, per = self.l1, self.l2, self.neighbors, self.max_iter, self.tol, self.columns_per_task

        n = kept.n

        def fit_blocks(batches):
            gm = bc.value
            for pdf in batches:
                for blk in pdf["id"].to_numpy():  # one block of columns = one independent problem
                    cols = np.arange(blk * per, min(n, (blk + 1) * per), dtype=np.int64)
                    nbrs = solvers.neighbourhoods(gm, cols, size)
                    w, sweeps = solvers.slim_columns(gm, cols, nbrs, l1, l2, max_iter, tol)
                    r, t_ = np.nonzero(w > 0)
                    yield pd.DataFrame({"a": nbrs[r, t_].astype(np.int32), "b": cols[r].astype(np.int32),
                                        "w": w[r, t_], "sweeps": np.full(len(r), sweeps, dtype=np.int32)})  # fmt: skip

        t = time.perf_counter()
        n_blk = -(-n // per)
        # one partition per block and no shuffle: adaptive execution cannot merge the (tiny) inputs into one task
        blocks = spark.range(0, n_blk, 1, numPartitions=n_blk)
        parts = blocks.mapInPandas(fit_blocks, "a int, b int, w double, sweeps int")
        got = parts.toPandas()  # at most n * neighbors rows
        w = np.zeros((kept.n, kept.n), dtype=np.float32)
        w[got["a"].to_numpy(), got["b"].to_numpy()] = got["w"].to_numpy()
        max_sweeps, nnz = int(got["sweeps"].max()) if len(got) else 0, len(got)
        bc.unpersist()
        del g
        return w, {"gram_s": round(t_gram, 3), "solve_s": round(time.perf_counter() - t, 3), "nnz": nnz, "max_sweeps": max_sweeps}
