"""The blockwise top-N of a sparse product against dense numpy, and kNN's top-N against its join reference."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_spark import sparse_topn as st
from recsys_spark.neighbors import KNN
from recsys_spark.schemas import RATINGS_SCHEMA


def random_case(seed: int, n_rows=9, n_mids=7, n_cols=11, density=0.35, integers=True, signed=False):
    rng = np.random.default_rng(seed)
    lmask, mmask = rng.random((n_rows, n_mids)) < density, rng.random((n_mids, n_cols)) < density
    draw = (lambda shape: rng.integers(-2 if signed else 1, 4, shape).astype(float)) if integers else (lambda shape: rng.random(shape))
    lv, mv = np.where(lmask, draw(lmask.shape), 0.0), np.where(mmask, draw(mmask.shape), 0.0)
    seen = rng.random((n_rows, n_cols)) < 0.2
    return lmask, lv, mmask, mv, seen


def brute(lmask, lv, mmask, mv, seen, k):
    """Per row: the unseen columns reached by a term, best score first, then the smaller column."""
    reached = (lmask.astype(int) @ mmask.astype(int)) > 0
    scores = lv @ mv
    out = {}
    for r in range(lv.shape[0]):
        cand = [(c, scores[r, c]) for c in range(mv.shape[1]) if reached[r, c] and not seen[r, c]]
        cand.sort(key=lambda t: (-t[1], t[0]))
        if cand:
            out[r] = cand[:k]
    return out


def entries(mask, values, ids_a, ids_b):
    a, b = np.nonzero(mask)
    return ids_a[a], ids_b[b], values[a, b]


@pytest.mark.parametrize("seed", range(8))
def test_a_block_keeps_each_rows_best_k_unseen_columns(seed):
    # ids are not positions (gaps, unsorted), values with ties; signed cases have zeros and cancelling
    # terms, where the candidate is still there with a score of 0
    signed = seed % 2 == 1
    lmask, lv, mmask, mv, seen = random_case(seed, signed=signed)
    rows, mids, cols = np.arange(9) * 3 + 5, np.arange(7)[::-1] * 2 + 1, np.arange(11) * 7
    lr, lm, lw = entries(lmask, lv, rows, mids)
    mm, mc, mvv = entries(mmask, mv, mids, cols)
    sr, sc = np.nonzero(seen)
    for k in (1, 3, 20):
        got = st.block_topk(lr, lm, lw, rows[sr], cols[sc], mm, mc, mvv, k)
        want = brute(lmask, lv, mmask, mv, seen, k)
        listed: dict[int, list] = {}
        for r, c, s in got.sort_values(["row", "score", "col"], ascending=[True, False, True]).itertuples(index=False):
            listed.setdefault(int(r), []).append((int(c), s))
        assert listed == {int(rows[r]): [(int(cols[c]), pytest.approx(s)) for c, s in v] for r, v in want.items()}, (seed, k)


def test_an_empty_side_gives_no_candidates():
    none = np.array([], np.int64)
    got = st.block_topk(none, none, np.array([]), none, none, np.array([1]), np.array([2]), np.array([1.0]), 3)
    assert got.empty and list(got.columns) == ["row", "col", "score"]


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "n_left", "n_right"),
    [(7000, 64753, 278_000, 20_000_000), (7000, 64753, 20_000_000, 278_000), (10, 10, 50, 50), (1, 5_000_000, 10, 9_000_000)],
)
def test_the_split_bounds_each_tasks_extent_and_blocks(n_rows, n_cols, n_left, n_right):
    n_rb, n_cb = st.split_sizes(n_rows, n_cols, n_left, n_right, cells=16_000_000, max_entries=2_000_000)
    assert 1 <= n_rb <= n_rows and 1 <= n_cb <= n_cols
    assert -(-n_rows // n_rb) * -(-n_cols // n_cb) <= 16_000_000 * 1.01 or n_rb == n_rows
    assert n_left / n_rb <= 2_000_000 and n_right / n_cb <= 2_000_000


def test_the_big_side_is_the_one_cut_into_more_blocks():
    # L small (ratings), M large (similarities): M is cut finer, so L, shipped once per M block, is what travels
    n_rb, n_cb = st.split_sizes(7000, 64753, 278_000, 20_000_000)
    assert n_cb > n_rb
    n_rb, n_cb = st.split_sizes(7000, 64753, 20_000_000, 278_000)
    assert n_rb > n_cb


def test_the_product_in_spark_equals_the_dense_answer(spark, monkeypatch):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    lmask, lv, mmask, mv, seen = random_case(3, n_rows=13, n_mids=8, n_cols=17, integers=False)
    rows, mids, cols = np.arange(13), np.arange(8), np.arange(17)
    lr, lm, lw = entries(lmask, lv, rows, mids)
    mm, mc, mvv = entries(mmask, mv, mids, cols)
    sr, sc = np.nonzero(seen)
    left = spark.createDataFrame([(int(a), int(b), float(c)) for a, b, c in zip(lr, lm, lw, strict=True)], "row int, mid int, w double")
    right = spark.createDataFrame([(int(a), int(b), float(c)) for a, b, c in zip(mm, mc, mvv, strict=True)], "mid int, col int, v double")
    seen_df = spark.createDataFrame([(int(a), int(b)) for a, b in zip(sr, sc, strict=True)], "row int, col int")
    want = brute(lmask, lv, mmask, mv, seen, 4)
    for cells in (40, 10_000):  # several row and column blocks, then one of each
        cand = st.product_topk(left, right, seen_df, 4, cells=cells)
        w = Window.partitionBy("row").orderBy(F.desc("score"), F.asc("col"))
        top = cand.withColumn("rank", F.row_number().over(w)).where("rank <= 4").collect()
        got: dict[int, list] = {}
        for r in sorted(top, key=lambda r: (r["row"], r["rank"])):
            got.setdefault(r["row"], []).append((r["col"], pytest.approx(r["score"])))
        assert got == {r: [(c, s) for c, s in v] for r, v in want.items()}, cells


@pytest.mark.parametrize("user_based", [False, True])
def test_knn_top_n_in_blocks_equals_the_join_reference(spark, user_based):
    rng = np.random.default_rng(5 + user_based)
    rows = [(u, i, float(rng.integers(1, 6)), 0) for u in range(25) for i in range(30) if rng.random() < 0.3]
    train = spark.createDataFrame(rows, RATINGS_SCHEMA)
    users = spark.createDataFrame([(u,) for u in [*range(0, 25, 2), 99]], "user_idx int")  # 99: unknown
    got = {}
    for kernel in ("blocks", "join"):
        model = KNN(user_based=user_based, similarity="cosine", shrinkage=0.0, recommend_kernel=kernel).fit(train)
        got[kernel] = sorted((r["user_idx"], r["rank"], r["item_idx"], round(r["score"], 9)) for r in model.recommend(users, 5).collect())
    assert got["blocks"] == got["join"] and len(got["blocks"]) > 30
    assert not {u for u, *_ in got["blocks"]} & {99}


def test_auto_takes_the_join_below_blocks_from_pairs(spark, monkeypatch):
    from recsys_spark import neighbors

    def called(*args, **kwargs):
        raise AssertionError("the blockwise top-N ran")

    rows = [(u, i, float(1 + (u * i) % 5), 0) for u in range(8) for i in range(6) if (u + i) % 3]
    train = spark.createDataFrame(rows, RATINGS_SCHEMA)
    users = spark.createDataFrame([(0,), (1,)], "user_idx int")
    monkeypatch.setattr(st, "product_topk", called)
    model = KNN(similarity="cosine", shrinkage=0.0).fit(train)
    assert 0 < model.params["n_pairs"] < neighbors.BLOCKS_FROM
    assert model.recommend(users, 3).count() > 0  # the join
    monkeypatch.setattr(neighbors, "BLOCKS_FROM", 1)
    with pytest.raises(AssertionError, match="blockwise"):
        model.recommend(users, 3)
