"""The item-item Gram matrix ``X' W X`` in Spark, assembled dense on the driver for the kept items.

The learned item-item models (:mod:`~recsys_spark.itemitem.models`) all start
from the same table: ``G[a, b] = sum_u w_u x_ua x_ub`` over the users who
interacted with both ``a`` and ``b`` (``w_u = 1`` for EASE and SLIM, ``deg_u **
-alpha`` for RP3beta).  It is the co-rating statistic the neighbourhood block
kernel computes (:func:`recsys_spark.neighbors.block_pair_stats`' ``sxy``),
here on contiguous blocks of item *positions* so that each task returns one
dense tile:

* items are restricted to the ``max_items`` most rated ones (ties: smaller
  ``item_idx``) and numbered ``0..n-1`` by ``item_idx`` (:func:`kept_items`);
* every interaction is sent to the block pairs ``(p, q)``, ``p <= q``, its
  item's block takes part in (:func:`~recsys_spark.neighbors.to_block_pairs`);
  each task builds the sparse users x items matrices of its two blocks and
  returns ``Xp' W Xq`` as one float32 tile, so only tiles are shuffled and
  collected, never the interactions;
* the driver writes each tile and its transpose into one ``n x n`` array.

The dense array is what the closed-form and coordinate-descent solvers need;
it costs ``4 n^2`` bytes (float32; 1.6 GB at 20K items), which is why
``max_items`` bounds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.neighbors import to_block_pairs
from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_USER

log = logging.getLogger(__name__)

COL_POS = "pos"  # an item's row/column in the dense matrices
COL_X = "x"  # the interaction value
WEIGHTINGS = ("binary", "rating")
TILE_DDL = "p int, q int, tile binary"


@dataclass
class KeptItems:
    """The items a dense item-item model covers: ``positions`` is ``(item_idx, pos)``."""

    positions: DataFrame
    item_idx: np.ndarray  # item_idx of position 0..n-1 (sorted)
    counts: np.ndarray  # each kept item's number of interactions, by position
    n_total: int  # distinct items in the training data

    @property
    def n(self) -> int:
        return len(self.item_idx)


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def interactions(train: DataFrame, weighting: str = "binary") -> DataFrame:
    """``(user_idx, item_idx, x)``: 1 per rated pair (``binary``) or the rating itself (``rating``)."""
    check_weighting(weighting)
    x = F.lit(1.0) if weighting == "binary" else F.col(COL_RATING).cast("double")
    return train.select(COL_USER, COL_ITEM, x.alias(COL_X))


def kept_items(x: DataFrame, max_items: int) -> KeptItems:
    """The ``max_items`` most rated items of ``x``, numbered by ``item_idx``.

    Collects at most ``max_items`` ids (the matrices are that size anyway).
    """
    counts = x.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    n_total = counts.count()  # a scalar
    top = counts.orderBy(F.desc("_n"), F.asc(COL_ITEM)).limit(max_items).collect()  # <= max_items rows
    order = np.argsort(np.array([r[0] for r in top], dtype=np.int64), kind="stable")
    ids = np.array([r[0] for r in top], dtype=np.int64)[order]
    n_per_item = np.array([r[1] for r in top], dtype=np.int64)[order]
    spark = x.sparkSession
    positions = spark.createDataFrame(
        pd.DataFrame({COL_ITEM: ids.astype(np.int32), COL_POS: np.arange(len(ids), dtype=np.int32)})
    )
    if len(ids) < n_total:
        log.info("item-item: %d of %d items kept (max_items=%d); the rest are not scored", len(ids), n_total, max_items)
    return KeptItems(positions, ids, n_per_item, n_total)


def gram(
    x_pos: DataFrame, n: int, block: int = 2048, user_weight: str | None = None, dtype: type = np.float64,
) -> np.ndarray:  # fmt: skip
    """The dense ``n x n`` matrix ``X' W X`` of ``x_pos`` = ``(user_idx, pos, x[, user_weight])``.

    ``user_weight`` names a column with each user's weight ``w_u`` (None: 1).
    Tiles of ``block`` positions are computed by Spark tasks (see the module
    docstring) and written into one array of ``dtype`` on the driver.
    """
    n_blocks = max(1, -(-n // block))
    w = F.col(user_weight) if user_weight else F.lit(1.0)
    t = x_pos.select(
        F.col(COL_USER).alias("_k"), F.col(COL_POS).alias("_e"), F.col(COL_X).cast("double").alias("_x"),
        w.cast("double").alias("_w"), (F.col(COL_POS) / F.lit(block)).cast("int").alias("_b"),
    )  # fmt: skip
    rep = to_block_pairs(t, "_b", n_blocks, ["_k", "_e", "_x", "_w"])

    def tile(pdf: pd.DataFrame) -> pd.DataFrame:
        from scipy import sparse

        p, q = int(pdf["_p"].iat[0]), int(pdf["_q"].iat[0])
        blk = pdf["_e"].to_numpy() // block
        users, u = np.unique(pdf["_k"].to_numpy(), return_inverse=True)

        def mat(sel: np.ndarray, b: int, weighted: bool) -> sparse.csr_matrix:
            width = min(block, n - b * block)
            vals = pdf["_x"].to_numpy()[sel] * (pdf["_w"].to_numpy()[sel] if weighted else 1.0)
            cols = pdf["_e"].to_numpy()[sel] - b * block
            return sparse.csr_matrix((vals, (u[sel], cols)), shape=(len(users), width))

        xp = mat(blk == p, p, True)
        xq = mat(blk == q, q, False)
        g = np.asarray((xp.T @ xq).todense(), dtype=np.float32)
        return pd.DataFrame({"p": [p], "q": [q], "tile": [g.tobytes()]})

    # an explicit partition count per tile pair: adaptive execution would merge a small input's tiles into one task
    n_pairs = n_blocks * (n_blocks + 1) // 2
    tiles = rep.repartition(n_pairs, "_p", "_q").groupBy("_p", "_q").applyInPandas(tile, TILE_DDL)
    out = np.zeros((n, n), dtype=dtype)
    got = 0
    for row in tiles.toLocalIterator():  # one tile at a time: the driver holds the result and one tile
        p, q = row["p"], row["q"]
        rp, rq = min(block, n - p * block), min(block, n - q * block)
        g = np.frombuffer(row["tile"], dtype=np.float32).reshape(rp, rq)
        out[p * block : p * block + rp, q * block : q * block + rq] = g
        if p != q:
            out[q * block : q * block + rq, p * block : p * block + rp] = g.T
        got += 1
    log.debug("gram: %d tiles of %d positions, n=%d", got, block, n)
    return out


def with_positions(x: DataFrame, kept: KeptItems) -> DataFrame:
    """``x`` restricted to the kept items, with their ``pos``."""
    return x.join(kept.positions, COL_ITEM)
