"""Top-N per row of a product of two sparse matrices held as DataFrames, computed in blocks.

``scores = L @ M`` with ``L`` given as ``(row, mid, w)`` entries and ``M`` as
``(mid, col, v)``; for every row, the ``k`` best columns not in ``seen``
``(row, col)``, ties broken by the smaller column id.  A candidate is every
``(row, col)`` reached by at least one ``w * v`` term, whatever its value
(as a join and a group-by would give it).

Item-kNN's top-N is ``X @ S`` (the users' rated items times the item
similarities) and user-kNN's is ``S @ R`` (user similarities times the
ratings): a join per entry makes ``sum_mid |L[:, mid]| * |M[mid, :]|`` rows,
which Spark shuffles and sorts (a long-tail catalogue of 105,000 items spilled
gigabytes in that join).  Here the rows of ``L`` are cut into ``n_rb`` blocks
and the columns of ``M`` into ``n_cb`` blocks, each block one array row; a
cartesian product of the two (Spark's shuffle-replicate nested loop) makes
every (row block, column block) pair one task that multiplies them with
scipy, masks ``seen`` and keeps each row's best ``k``; the caller's window
over the partial lists makes the top-N exact.

The split keeps each task's dense extent ``rows x columns`` under
``CELLS`` and ships as little as it can: ``L`` travels ``n_cb`` times and
``M`` ``n_rb`` times, so with ``n_rb * n_cb = T`` tasks the cheapest is
``n_cb = sqrt(T |M| / |L|)``; neither block may exceed ``MAX_ENTRIES``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

CELLS = 8_000_000  # rows x columns of one task's product (its dense extent: the memory bound of a task)
MAX_ENTRIES = 2_000_000  # entries of one block (one array row: 16 bytes each)
ROW, MID, W, COL, V = "row", "mid", "w", "col", "v"


def split_sizes(n_rows: int, n_cols: int, n_left: int, n_right: int, cells: int = CELLS, max_entries: int = MAX_ENTRIES) -> tuple[int, int]:
    """``(n_rb, n_cb)``: row blocks of ``L`` and column blocks of ``M`` (see the module docstring)."""
    n_rows, n_cols = max(1, n_rows), max(1, n_cols)
    tasks = max(1, math.ceil(n_rows * n_cols / cells))
    n_cb = min(n_cols, max(1, round(math.sqrt(tasks * max(n_right, 1) / max(n_left, 1)))))
    n_rb = min(n_rows, max(1, math.ceil(tasks / n_cb)))
    n_cb = min(n_cols, max(n_cb, math.ceil(tasks / n_rb), math.ceil(n_right / max_entries)))
    n_rb = min(n_rows, max(n_rb, math.ceil(n_left / max_entries)))
    return n_rb, n_cb


def block_topk(
    l_rows: np.ndarray, l_mids: np.ndarray, l_ws: np.ndarray, s_rows: np.ndarray, s_cols: np.ndarray,
    m_mids: np.ndarray, m_cols: np.ndarray, m_vs: np.ndarray, k: int,
) -> pd.DataFrame:  # fmt: skip
    """One (row block, column block): each row's best ``k`` unseen columns of ``L @ M`` as ``(row, col, score)``."""
    from scipy import sparse

    from recsys_spark.neighbors import top_k_per_a

    empty = pd.DataFrame({ROW: np.array([], np.int32), COL: np.array([], np.int32), "score": np.array([], np.float64)})
    if len(l_rows) == 0 or len(m_mids) == 0:
        return empty
    rows, ri = np.unique(l_rows, return_inverse=True)
    mids, inv = np.unique(np.concatenate([l_mids, m_mids]), return_inverse=True)
    cols, ci = np.unique(m_cols, return_inverse=True)
    shape_l, shape_m = (len(rows), len(mids)), (len(mids), len(cols))
    li, mi = inv[: len(l_mids)], inv[len(l_mids) :]
    lm = sparse.csr_matrix((np.asarray(l_ws, np.float64), (ri, li)), shape=shape_l)
    mm = sparse.csr_matrix((np.asarray(m_vs, np.float64), (mi, ci)), shape=shape_m)
    prod = (lm @ mm).tocoo()
    r, c, s = prod.row.astype(np.int64), prod.col.astype(np.int64), prod.data
    if (np.asarray(l_ws) <= 0).any() or (np.asarray(m_vs) <= 0).any():
        # a sum can be exactly 0 (a zero or cancelling terms) and scipy drops it: the candidates are
        # the structure of the product, its values looked up there
        lo = sparse.csr_matrix((np.ones(len(li)), (ri, li)), shape=shape_l)
        st = (lo @ sparse.csr_matrix((np.ones(len(mi)), (mi, ci)), shape=shape_m)).tocoo()
        r, c = st.row.astype(np.int64), st.col.astype(np.int64)
        s = np.asarray(prod.tocsr()[r, c]).ravel()
    if len(s_rows):
        # seen entries of this block: row and column both present here
        sr = np.searchsorted(rows, s_rows)
        sc = np.searchsorted(cols, s_cols)
        ok = (sr < len(rows)) & (sc < len(cols))
        ok[ok] = (rows[sr[ok]] == s_rows[ok]) & (cols[sc[ok]] == s_cols[ok])
        keep = ~np.isin(r * len(cols) + c, sr[ok].astype(np.int64) * len(cols) + sc[ok])
        r, c, s = r[keep], c[keep], s[keep]
    if len(r) == 0:
        return empty
    gr, gc = rows[r], cols[c]
    idx = top_k_per_a(gr, gc, s, k)
    return pd.DataFrame({ROW: gr[idx].astype(np.int32), COL: gc[idx].astype(np.int32), "score": s[idx].astype(np.float64)})


def product_topk(left: DataFrame, right: DataFrame, seen: DataFrame, k: int, cells: int = CELLS) -> DataFrame:
    """Candidates ``(row, col, score)``: each row's best ``k`` of every column block (rank them with one window).

    ``left`` ``(row, mid, w)``, ``right`` ``(mid, col, v)``, ``seen`` ``(row, col)``; integer ids.
    """
    sl = left.agg(F.count("*"), F.countDistinct(ROW)).first()
    sr = right.agg(F.count("*"), F.countDistinct(COL)).first()
    n_left, n_rows, n_right, n_cols = int(sl[0]), int(sl[1]), int(sr[0]), int(sr[1])
    schema = f"{ROW} int, {COL} int, score double"
    spark = left.sparkSession
    if n_left == 0 or n_right == 0:
        return spark.createDataFrame([], schema)
    n_rb, n_cb = split_sizes(n_rows, n_cols, n_left, n_right, cells)
    log.info("top-%d of a sparse product: %d x %d entries over %d rows and %d columns, %d x %d blocks",
             k, n_left, n_right, n_rows, n_cols, n_rb, n_cb)  # fmt: skip

    def blocks(df: DataFrame, key: str, n: int, name: str, cols: tuple[str, ...]) -> DataFrame:
        # one block per partition (an explicit count: adaptive execution keeps it), arrays of primitives
        grouped = (
            df.withColumn(name, F.pmod(F.col(key), F.lit(n)))
            .repartition(n, name)
            .groupBy(name)
            .agg(F.collect_list(F.struct(*cols)).alias("_e"))
        )
        return grouped.select(name, *[F.col("_e." + c).alias(f"{name}_{c}") for c in cols])

    lb = blocks(left, ROW, n_rb, "_rb", (ROW, MID, W))
    sb = blocks(seen, ROW, n_rb, "_rb", (ROW, COL)).withColumnsRenamed({"_rb_row": "_s_row", "_rb_col": "_s_col"})
    rb = lb.join(sb, "_rb", "left")
    cb = blocks(right, COL, n_cb, "_cb", (MID, COL, V))
    pairs = rb.hint("shuffle_replicate_nl").crossJoin(cb)

    cols = ["_rb_row", "_rb_mid", "_rb_w", "_s_row", "_s_col", "_cb_mid", "_cb_col", "_cb_v"]
    kinds = [np.int64, np.int64, np.float64, np.int64, np.int64, np.int64, np.int64, np.float64]

    def score(batches):
        for pdf in batches:
            out = []
            for values in zip(*(pdf[c] for c in cols), strict=True):
                arrays = [np.asarray(x if x is not None else [], kind) for x, kind in zip(values, kinds, strict=True)]
                out.append(block_topk(*arrays, k))
            if out:
                yield pd.concat(out)

    return pairs.select(*cols).mapInPandas(score, schema)
