"""EASE, RP3beta and SLIM against independent references on tiny data, and the shared contract."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from recsys_spark.itemitem import EASE, SLIM, RP3beta, solvers
from recsys_spark.schemas import RATINGS_SCHEMA
from tests.contract.model_contract import ClassScopedContract

RNG = np.random.default_rng(11)
N_USERS, N_ITEMS = 14, 9
# users x items, 0 = not rated; item 8 is rated by nobody (never a candidate)
DENSE = np.where(RNG.random((N_USERS, N_ITEMS)) < 0.45, RNG.integers(1, 6, (N_USERS, N_ITEMS)), 0).astype(float)
DENSE[:, 8] = 0
DENSE[0, :3] = [5, 4, 0]  # user 0 rates items 0 and 1 at least
DENSE[1, 0] = 3


@pytest.fixture(scope="module")
def ratings(spark):
    rows = [(int(u), int(i), float(DENSE[u, i]), 0) for u, i in zip(*np.nonzero(DENSE), strict=True)]
    return spark.createDataFrame(rows, RATINGS_SCHEMA)


def rated_items() -> np.ndarray:
    return np.flatnonzero((DENSE > 0).any(axis=0))


def spark_scores(model, spark, users) -> dict[tuple[int, int], float]:
    top = model.recommend(spark.createDataFrame([(u,) for u in users], "user_idx int"), N_ITEMS)
    return {(r["user_idx"], r["item_idx"]): r["score"] for r in top.collect()}


def check_scores(got: dict, x: np.ndarray, w: np.ndarray, items: np.ndarray, users) -> None:
    """Every unseen candidate's score is ``x_u W`` (the dense reference), and nothing else is listed."""
    s = x @ w
    for u in users:
        expected = {int(items[j]): s[u, j] for j in range(len(items)) if x[u, j] == 0}
        listed = {i: v for (uu, i), v in got.items() if uu == u}
        assert set(listed) == set(expected), u
        for i, v in listed.items():
            assert v == pytest.approx(expected[i], abs=1e-5), (u, i)


# -- EASE ------------------------------------------------------------------------------------------


def test_ease_weights_match_a_dense_solve():
    x = (DENSE[:, rated_items()] > 0).astype(float)
    g = x.T @ x
    lam = 3.0
    # the least-squares item-item regression with w_jj = 0 solved column by column (no inverse formula)
    n = g.shape[0]
    ref = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        a = g[np.ix_(others, others)] + lam * np.eye(n - 1)
        ref[others, j] = np.linalg.solve(a, g[others, j])
    got = solvers.ease(g.copy(), lam)
    assert np.allclose(np.diag(got), 0.0)
    assert np.allclose(got, ref, atol=1e-10)
    with pytest.raises(ValueError, match="l2_reg"):
        solvers.ease(g.copy(), 0.0)


def test_ease_in_spark_scores_x_times_b(spark, ratings):
    items = rated_items()
    for weighting, x in (("binary", (DENSE[:, items] > 0).astype(float)), ("rating", DENSE[:, items])):
        model = EASE(l2_reg=2.5, weighting=weighting, item_block=3, user_block=4, gram_block=4).fit(ratings)
        assert model.info["n"] == len(items) and model.info["items_not_scored"] == 0
        ref = np.linalg.inv(x.T @ x + 2.5 * np.eye(len(items)))
        b = -ref / np.diag(ref)
        np.fill_diagonal(b, 0.0)
        check_scores(spark_scores(model, spark, range(N_USERS)), x, b, items, range(N_USERS))


def test_slabs_made_in_several_broadcasts_score_x_times_b(spark, ratings, monkeypatch):
    # W leaves the driver in groups of slabs (a broadcast each, bounded by SLAB_GROUP_BYTES): with
    # 8 kept items and slabs 3 wide, 2 slabs per group -> slabs {0, 1} and {2}, still one per partition
    from recsys_spark.itemitem import models

    monkeypatch.setattr(models, "SLAB_GROUP_BYTES", 2 * 4 * 8 * 3)
    items = rated_items()
    assert len(items) == 8
    model = EASE(l2_reg=2.5, item_block=3, user_block=4).fit(ratings)
    assert model.slabs.rdd.getNumPartitions() == 3
    assert sorted(r["cb"] for r in model.slabs.select("cb").collect()) == [0, 1, 2]
    x = (DENSE[:, items] > 0).astype(float)
    ref = np.linalg.inv(x.T @ x + 2.5 * np.eye(len(items)))
    b = -ref / np.diag(ref)
    np.fill_diagonal(b, 0.0)
    check_scores(spark_scores(model, spark, range(N_USERS)), x, b, items, range(N_USERS))


def test_ease_max_items_keeps_the_most_rated_and_counts_the_rest(spark, ratings):
    counts = (DENSE > 0).sum(axis=0)
    order = sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))
    kept = np.sort(order[:5])
    model = EASE(l2_reg=1.0, max_items=5).fit(ratings)
    assert model.info["n"] == 5 and model.info["items_not_scored"] == len(rated_items()) - 5
    x = (DENSE[:, kept] > 0).astype(float)
    known = [u for u in range(N_USERS) if x[u].any()]  # the others get the popularity list
    listed = {i for (_, i) in spark_scores(model, spark, known)}
    assert listed <= set(kept.tolist())
    ref = np.linalg.inv(x.T @ x + np.eye(5))
    b = -ref / np.diag(ref)
    np.fill_diagonal(b, 0.0)
    check_scores(spark_scores(model, spark, known), x, b, kept, known)


def test_a_user_without_kept_items_gets_the_popularity_list(spark, ratings):
    model = EASE(l2_reg=1.0).fit(ratings)
    top = model.recommend(spark.createDataFrame([(500,)], "user_idx int"), 3).orderBy("rank").collect()
    counts = (DENSE > 0).sum(axis=0)
    assert [r["item_idx"] for r in top] == sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))[:3]
    assert {r["model"] for r in top} == {"ease"}


# -- RP3beta ---------------------------------------------------------------------------------------


def test_rp3beta_is_the_three_step_walk():
    """W[i, j] by walking i -> u -> j one step at a time (probabilities ** alpha), over deg(j) ** beta."""
    x = (DENSE[:, rated_items()] > 0).astype(float)
    n_u, n_i = x.shape
    alpha, beta = 0.7, 0.4
    walk = np.zeros((n_i, n_i))
    for i in range(n_i):
        for u in range(n_u):
            if not x[u, i]:
                continue
            p_iu = (1.0 / x[:, i].sum()) ** alpha  # item i -> one of its users, uniformly
            for j in range(n_i):
                if x[u, j] and j != i:
                    p_uj = (1.0 / x[u].sum()) ** alpha  # user u -> one of their items, uniformly
                    walk[i, j] += p_iu * p_uj
    walk /= x.sum(axis=0)[None, :] ** beta
    deg_u = x.sum(axis=1)
    g_w = x.T @ (x * deg_u[:, None] ** -alpha)
    got = solvers.rp3beta(g_w, x.sum(axis=0), alpha, beta, None)
    assert np.allclose(got, walk)
    pruned = solvers.rp3beta(x.T @ (x * deg_u[:, None] ** -alpha), x.sum(axis=0), alpha, beta, 2)
    for r in range(n_i):  # each row keeps its two largest weights, the rest are zero
        kept = np.flatnonzero(pruned[r])
        assert len(kept) <= 2
        assert np.allclose(pruned[r, kept], walk[r, kept])
        dropped = np.setdiff1d(np.arange(n_i), kept)
        assert walk[r, dropped].max(initial=0.0) <= walk[r, kept].min(initial=np.inf) + 1e-12


def test_rp3beta_in_spark(spark, ratings):
    items = rated_items()
    x = (DENSE[:, items] > 0).astype(float)
    model = RP3beta(alpha=0.7, beta=0.4, neighbors=None, item_block=2).fit(ratings)
    w = solvers.rp3beta(x.T @ (x * x.sum(axis=1)[:, None] ** -0.7), x.sum(axis=0), 0.7, 0.4, None)
    check_scores(spark_scores(model, spark, range(N_USERS)), x, w, items, range(N_USERS))


# -- SLIM ------------------------------------------------------------------------------------------


def elastic_net_reference(x: np.ndarray, j: int, l1: float, l2: float) -> np.ndarray:
    """min 1/2 |x_j - X w|^2 + l1 sum(w) + l2/2 |w|^2 over w >= 0, w_j = 0, by L-BFGS-B on the raw data."""
    n = x.shape[1]

    def f(w):
        r = x[:, j] - x @ w
        return 0.5 * r @ r + l1 * w.sum() + 0.5 * l2 * w @ w, -x.T @ r + l1 + l2 * w

    bounds = [(0.0, 0.0) if i == j else (0.0, None) for i in range(n)]
    res = optimize.minimize(f, np.zeros(n), jac=True, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-14, "gtol": 1e-10})
    return res.x


def test_slim_columns_equal_an_elastic_net_solve():
    x = (DENSE[:, rated_items()] > 0).astype(float)
    n = x.shape[1]
    g = x.T @ x
    cols = np.arange(n)
    nbrs = solvers.neighbourhoods(g, cols, n - 1)  # every other item: the unrestricted problem
    assert all(j not in nbrs[j] for j in cols)
    w, sweeps = solvers.slim_columns(g, cols, nbrs, l1=0.3, l2=1.5, max_iter=500, tol=1e-10)
    dense = np.zeros((n, n))
    for j in cols:
        dense[nbrs[j], j] = w[j]
    assert (dense >= 0).all() and np.allclose(np.diag(dense), 0.0)
    for j in cols:
        assert np.allclose(dense[:, j], elastic_net_reference(x, j, 0.3, 1.5), atol=1e-5), j
    assert sweeps < 500


def test_slim_in_spark_fits_columns_as_tasks(spark, ratings):
    items = rated_items()
    x = (DENSE[:, items] > 0).astype(float)
    model = SLIM(l1=0.3, l2=1.5, neighbors=4, columns_per_task=3, max_iter=500, tol=1e-10).fit(ratings)
    g = x.T @ x
    cols = np.arange(len(items))
    nbrs = solvers.neighbourhoods(g, cols, 4)
    w, _ = solvers.slim_columns(g, cols, nbrs, 0.3, 1.5, 500, 1e-10)
    dense = np.zeros((len(items), len(items)))
    for j in cols:
        dense[nbrs[j], j] = w[j]
    assert model.info["nnz"] == int((dense > 0).sum())
    check_scores(spark_scores(model, spark, range(N_USERS)), x, dense, items, range(N_USERS))


def test_bad_settings_are_errors(ratings):
    with pytest.raises(ValueError, match="l2_reg"):
        EASE(l2_reg=-1.0).fit(ratings)
    with pytest.raises(ValueError, match="weighting"):
        EASE(weighting="counts").fit(ratings)
    with pytest.raises(ValueError, match="alpha"):
        RP3beta(alpha=-0.5).fit(ratings)
    with pytest.raises(ValueError, match="SLIM needs"):
        SLIM(l1=0.0, l2=0.0).fit(ratings)


def test_recommend_does_not_depend_on_the_partitioning(spark, ratings):
    users = spark.createDataFrame([(u,) for u in range(N_USERS)], "user_idx int")
    a = sorted(EASE(l2_reg=2.0, item_block=2).fit(ratings).recommend(users, 3).collect())
    b = sorted(EASE(l2_reg=2.0, item_block=5, user_block=3).fit(ratings.repartition(3)).recommend(users, 3).collect())
    assert [(r[0], r[1], r[2], round(r[3], 9)) for r in a] == [(r[0], r[1], r[2], round(r[3], 9)) for r in b]


# -- the shared contract ---------------------------------------------------------------------------


class TestEASEContract(ClassScopedContract):
    def make(self):
        return EASE(l2_reg=1.0)


class TestRP3betaContract(ClassScopedContract):
    def make(self):
        return RP3beta(neighbors=3)


class TestSLIMContract(ClassScopedContract):
    def make(self):
        return SLIM(l1=0.1, l2=1.0, neighbors=3)


def test_the_inverse_is_symmetrised_across_row_chunks():
    rng = np.random.default_rng(3)
    upper = np.triu(rng.random((8, 8)))
    got = upper.copy()
    solvers.symmetrize_upper(got, chunk=3)
    assert np.array_equal(got, upper + np.triu(upper, k=1).T)
    a = rng.random((7, 7))
    a = a @ a.T + 7 * np.eye(7)
    assert np.allclose(solvers.spd_inverse(a.copy()), np.linalg.inv(a))


def test_materialize_leaves_the_slabs_where_the_fit_stored_them(spark, ratings):
    # the slabs are rows of up to 64 MB on the executors' disks: caching them again in the heap ran
    # the long-tail pipeline's 4 GB JVM out of memory; the other tables are cached as for every model
    from pyspark import StorageLevel

    from recsys_spark.recommender import materialize, release

    model = materialize(EASE(l2_reg=1.0, item_block=3).fit(ratings))
    assert model.slabs.storageLevel == StorageLevel.NONE
    assert model.x.storageLevel != StorageLevel.NONE
    release(model)
