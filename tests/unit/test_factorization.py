"""Factorization: numpy kernels against naive per-rating loops and finite differences,
the Spark engine on problems with known answers, the factor model's scoring, and the
shared model contract for every registered factorization model."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark.baselines import BiasBaseline
from recsys_spark.factorization import kernels as K
from recsys_spark.factorization.als import ALS, ALSFactorModel
from recsys_spark.factorization.model import FactorModel, factor_topk
from recsys_spark.factorization.svd import NMFMU, SVD, SVDpp
from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS_SCHEMA
from tests.contract.model_contract import TRAIN, ClassScopedContract


def _tiny(n_users=6, n_items=5, density=0.7, seed=3):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[np.arange(n_users), np.arange(n_users) % n_items] = True  # every user rates something
    u, i = np.nonzero(mask)
    r = rng.integers(1, 6, len(u)).astype(float)
    t = rng.integers(0, 400 * 86400, len(u)).astype(float)
    return K.build_shard(u, i, r, t), n_users, n_items


# -- kernels -------------------------------------------------------------------------
def test_build_shard_sorts_by_user_and_builds_offsets():
    sh = K.build_shard(np.array([7, 3, 7, 3, 9]), np.array([1, 2, 0, 1, 4]), np.array([1.0, 2, 3, 4, 5]), None)
    assert sh["users"].tolist() == [3, 7, 9]
    assert sh["u"].tolist() == [0, 0, 1, 1, 2]
    assert sh["i"].tolist() == [1, 2, 0, 1, 4]
    assert sh["r"].tolist() == [4.0, 2.0, 3.0, 1.0, 5.0]
    assert sh["indptr"].tolist() == [0, 2, 4, 5]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scatter_add_sums_repeated_indices_like_add_at(backend, dtype):
    if backend == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 7, 50)  # every index repeated
    for shape in ((10,), (10, 3)):
        target = rng.normal(size=shape).astype(dtype)
        vals = rng.normal(size=(50, *shape[1:])).astype(dtype)
        want = target.copy()
        np.add.at(want, idx, vals)
        K.scatter_add(target, idx, vals, backend=backend)
        assert target.dtype == dtype
        np.testing.assert_allclose(target, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_scatter_add_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="auto, torch or numpy"):
        K.scatter_add(np.zeros(3), np.array([0]), np.ones(1), backend="cuda")


def test_pack_round_trips_a_shard_and_keeps_inexact_ratings_in_float64():
    sh, _, _ = _tiny()
    packed = K.pack(sh)
    assert "u" not in packed and packed["i"].dtype == np.int32 and packed["r"].dtype == np.float32  # 1..5: exact
    back = K.unpack(packed)
    for key in ("users", "u", "i", "r", "t", "indptr"):
        np.testing.assert_array_equal(back[key], sh[key])
        assert back[key].dtype == sh[key].dtype
    assert packed["items"].tolist() == sorted(set(sh["i"].tolist()))
    assert packed["item_counts"].tolist() == [int((sh["i"] == j).sum()) for j in packed["items"]]
    odd = K.build_shard(np.array([0, 1]), np.array([0, 0]), np.array([3.7, 0.1]), None)  # not exact in float32
    assert K.pack(odd)["r"].dtype == np.float64
    np.testing.assert_array_equal(K.unpack(K.pack(odd))["r"], [3.7, 0.1])
    assert K.unpack(sh) is sh  # a working shard passes through


def test_sgd_float32_parameters_stay_float32_and_follow_the_float64_epoch():
    sh, nu, ni = _tiny(n_users=40, n_items=30, density=0.5)
    rng = np.random.default_rng(11)  # each test its own stream: inputs do not depend on test order
    P0, Q0 = rng.normal(0, 0.1, (nu, 4)), rng.normal(0, 0.1, (ni, 4))
    hp = {"lr": 0.01, "reg": 0.05, "batch_size": 8}
    out = {}
    for dt in (np.float64, np.float32):
        U = {"P": P0.astype(dt), "bu": np.zeros(nu, dt)}
        I = {"Q": Q0.astype(dt), "bi": np.zeros(ni, dt)}
        seen = K.sgd_epoch(sh, U, I, 3.0, hp, np.random.default_rng(5))
        assert all(a.dtype == dt for a in (*U.values(), *I.values()))
        out[dt] = (seen, U, I)
    assert out[np.float32][0] == pytest.approx(out[np.float64][0], rel=1e-5)
    np.testing.assert_allclose(out[np.float32][1]["P"], out[np.float64][1]["P"], atol=1e-5)
    np.testing.assert_allclose(out[np.float32][2]["bi"], out[np.float64][2]["bi"], atol=1e-5)


def test_sgd_batch_of_one_is_sequential_funk_sgd():
    sh, nu, ni = _tiny()
    k, mu, lr, reg = 3, 3.0, 0.01, 0.05
    rng = np.random.default_rng(12)
    P0, Q0 = rng.normal(0, 0.1, (nu, k)), rng.normal(0, 0.1, (ni, k))
    U = {"P": P0.copy(), "bu": np.zeros(nu)}
    I = {"Q": Q0.copy(), "bi": np.zeros(ni)}
    K.sgd_epoch(sh, U, I, mu, {"lr": lr, "reg": reg, "batch_size": 1}, np.random.default_rng(5))
    # the naive loop, same visiting order
    P, Q, bu, bi = P0.copy(), Q0.copy(), np.zeros(nu), np.zeros(ni)
    for n in np.random.default_rng(5).permutation(len(sh["r"])):
        u, i, r = sh["u"][n], sh["i"][n], sh["r"][n]
        e = r - (mu + bu[u] + bi[i] + P[u] @ Q[i])
        bu[u] += lr * (e - reg * bu[u])
        bi[i] += lr * (e - reg * bi[i])
        pu = P[u].copy()
        P[u] += lr * (e * Q[i] - reg * P[u])
        Q[i] += lr * (e * pu - reg * Q[i])
    np.testing.assert_allclose(U["P"], P, atol=1e-12)
    np.testing.assert_allclose(I["Q"], Q, atol=1e-12)
    np.testing.assert_allclose(U["bu"], bu, atol=1e-12)
    np.testing.assert_allclose(I["bi"], bi, atol=1e-12)


def test_svdpp_batch_of_one_is_the_per_rating_svdpp_step():
    sh, nu, ni = _tiny(seed=4)
    k, mu, lr, reg = 2, 3.0, 0.02, 0.03
    N = K.implicit_matrix(sh, ni)
    rng = np.random.default_rng(13)
    P0, Q0, Y0 = (rng.normal(0, 0.1, s) for s in ((nu, k), (ni, k), (ni, k)))
    U = {"P": P0.copy(), "bu": np.zeros(nu)}
    I = {"Q": Q0.copy(), "bi": np.zeros(ni), "Y": Y0.copy()}
    K.svdpp_epoch(sh, U, I, mu, {"lr": lr, "reg": reg, "batch_size": 1}, np.random.default_rng(9), N, None)
    P, Q, Y, bu, bi = P0.copy(), Q0.copy(), Y0.copy(), np.zeros(nu), np.zeros(ni)
    rated = {u: sh["i"][sh["u"] == u] for u in range(nu)}
    for n in np.random.default_rng(9).permutation(len(sh["r"])):
        u, i, r = sh["u"][n], sh["i"][n], sh["r"][n]
        Nu = rated[u]
        z = Y[Nu].sum(axis=0) / np.sqrt(len(Nu))
        e = r - (mu + bu[u] + bi[i] + (P[u] + z) @ Q[i])
        bu[u] += lr * (e - reg * bu[u])
        bi[i] += lr * (e - reg * bi[i])
        pu, qi = P[u].copy(), Q[i].copy()
        P[u] += lr * (e * qi - reg * pu)
        Q[i] += lr * (e * (pu + z) - reg * qi)
        Y[Nu] += lr * (e * qi / np.sqrt(len(Nu)) - reg * Y[Nu])
    np.testing.assert_allclose(U["P"], P, atol=1e-12)
    np.testing.assert_allclose(I["Q"], Q, atol=1e-12)
    np.testing.assert_allclose(I["Y"], Y, atol=1e-12)
    np.testing.assert_allclose(I["bi"], bi, atol=1e-12)


def test_implicit_matrix_normalises_and_adds_unrated_pairs():
    sh = K.build_shard(np.array([0, 0, 1]), np.array([0, 2, 1]), np.array([4.0, 3, 5]), None)
    N = K.implicit_matrix(sh, 4, extra=(np.array([1, 1]), np.array([3, 1])))  # (1,1) already rated
    dense = N.toarray()
    np.testing.assert_allclose(dense[0], [1 / np.sqrt(2), 0, 1 / np.sqrt(2), 0])
    np.testing.assert_allclose(dense[1], [0, 1 / np.sqrt(2), 0, 1 / np.sqrt(2)])


def test_time_features_by_hand():
    tp = {"t0": 100.0, "bin_width": 10.0, "n_bins": 3, "beta": 0.5}
    b, dev = K.time_features(np.array([100.0, 125.0, 180.0, 91.0]), np.array([0, 0, 1, 1]), np.array([109.0, 116.0]), tp)
    assert b.tolist() == [0, 2, 2, 0]  # 180 clamps to the last bin, 91 to the first
    np.testing.assert_allclose(dev, [-3.0, 4.0, 8.0, -5.0])


def _objective(sh, U, I, mu, reg):
    e = sh["r"] - K.estimate(sh["u"], sh["i"], U, I, mu)
    n_u = np.bincount(sh["u"], minlength=len(U["bu"]))
    n_i = np.bincount(sh["i"], minlength=len(I["bi"]))
    return e @ e + reg * (n_u @ (U["bu"] ** 2 + (U["P"] ** 2).sum(1)) + n_i @ (I["bi"] ** 2 + (I["Q"] ** 2).sum(1)))


def test_gd_directions_are_minus_half_the_finite_difference_gradient():
    sh, nu, ni = _tiny(seed=6)
    k, mu, reg = 2, 3.1, 0.07
    rng = np.random.default_rng(14)
    U = {"P": rng.normal(0, 0.3, (nu, k)), "bu": rng.normal(0, 0.2, nu)}
    I = {"Q": rng.normal(0, 0.3, (ni, k)), "bi": rng.normal(0, 0.2, ni)}
    du, di, _ = K.gd_gradients(sh, U, I, mu, {"reg": reg}, ni)
    n_i = np.bincount(sh["i"], minlength=ni)
    eps = 1e-6
    for side, name, idx, direction in (
        (U, "P", (1, 0), du["P"][1, 0]), (U, "bu", (2,), du["bu"][2]),
        (I, "Q", (3, 1), di["Q"][3, 1] - reg * n_i[3] * I["Q"][3, 1]), (I, "bi", (0,), di["bi"][0] - reg * n_i[0] * I["bi"][0]),
    ):  # fmt: skip
        side[name][idx] += eps
        up = _objective(sh, U, I, mu, reg)
        side[name][idx] -= 2 * eps
        down = _objective(sh, U, I, mu, reg)
        side[name][idx] += eps
        assert direction == pytest.approx(-(up - down) / (2 * eps) / 2, rel=1e-5, abs=1e-7)


def test_nmf_multiplicative_update_by_hand():
    sh = K.build_shard(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([4.0, 2.0, 3.0]), None)
    U = {"P": np.array([[1.0], [2.0]]), "bu": np.zeros(2)}
    I = {"Q": np.array([[1.0], [0.5]]), "bi": np.zeros(2)}
    sums, err = K.nmf_mu_sums(sh, U, I, {"reg_user": 0.1, "reg_item": 0.1}, 2)
    # epoch-start estimates: (0,0)=1, (0,1)=0.5, (1,1)=1
    # user 0: num = 1*4 + 0.5*2 = 5, den = 1*1 + 0.5*0.5 + 0.1*2*1 = 1.45
    # user 1: num = 0.5*3 = 1.5, den = 0.5*1 + 0.1*1*2 = 0.7
    p0, p1 = 5 / 1.45, 2 * 1.5 / 0.7
    np.testing.assert_allclose(U["P"].ravel(), [p0, p1])
    # item sums from the updated users: item 0 rated by user 0; item 1 by users 0 and 1
    np.testing.assert_allclose(sums["num"].ravel(), [4 * p0, 2 * p0 + 3 * p1])
    np.testing.assert_allclose(sums["den"].ravel(), [p0 * p0 * 1.0, p0 * p0 * 0.5 + p1 * p1 * 0.5])
    assert err == pytest.approx(9 + 1.5**2 + 4)


# -- the Spark engine ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rank1(spark):
    """A fully observed rank-1 matrix (values 1..5)."""
    a = np.linspace(1.0, 2.2, 12)
    b = np.linspace(1.0, 2.2, 9)
    R = np.outer(a, b)
    rows = [(u, i, float(R[u, i]), 1_000_000 + 86400 * (u + i)) for u in range(12) for i in range(9)]
    return spark.createDataFrame(rows, RATINGS_SCHEMA), R


def _dense(model, n_users, n_items):
    uf = {r["user_idx"]: (r["b_u"], np.array(r["factors"])) for r in model.user_factors.collect()}
    itf = {r["item_idx"]: (r["b_i"], np.array(r["factors"])) for r in model.item_factors.collect()}
    return np.array([[model.mu + uf[u][0] + itf[i][0] + uf[u][1] @ itf[i][1] for i in range(n_items)] for u in range(n_users)])


def test_sgd_recovers_a_rank1_matrix(rank1):
    df, R = rank1
    m = SVD(rank=1, n_epochs=15, lr=0.1, reg=0.0, biased=False, init_std=0.3, batch_size=1, scale=Scale(0.5, 5)).fit(df)
    assert np.sqrt(np.mean((_dense(m, *R.shape) - R) ** 2)) < 1e-3


@pytest.mark.extended
def test_sgd_lr_decay_scales_every_step_size_per_epoch(rank1):
    from recsys_spark.factorization.engine import _decayed

    assert _decayed({"lr": 0.1, "lr_bias": 0.2, "reg": 0.3, "lr_decay": 0.5}, 2) == pytest.approx({"lr": 0.025, "lr_bias": 0.05})
    assert _decayed({"lr": 0.1}, 7) == {"lr": 0.1}
    # lr_decay 0: only the first epoch moves anything, so three epochs end where one does
    df, R = rank1
    kw = dict(rank=2, lr=0.05, reg=0.01, batch_size=16, scale=Scale(0.5, 5))
    for est in (SVD, SVDpp):
        one = _dense(est(n_epochs=1, **kw).fit(df), *R.shape)
        three = _dense(est(n_epochs=3, lr_decay=0.0, **kw).fit(df), *R.shape)
        np.testing.assert_allclose(three, one, atol=1e-12)
        assert not np.allclose(_dense(est(n_epochs=3, **kw).fit(df), *R.shape), one)


def test_nmf_mu_recovers_a_rank1_matrix_with_nonnegative_factors(rank1):
    df, R = rank1
    m = NMFMU(rank=1, n_epochs=30, reg_pu=0.0, reg_qi=0.0, scale=Scale(0.5, 5)).fit(df)
    assert np.sqrt(np.mean((_dense(m, *R.shape) - R) ** 2)) < 0.01
    for t in (m.user_factors, m.item_factors):
        assert t.select(F.explode("factors").alias("f")).where("f < 0").count() == 0


def test_gd_objective_decreases_every_epoch(rank1):
    df, _ = rank1
    m = SVD(rank=3, n_epochs=15, lr=0.3, reg=0.02, optimizer="gd", momentum=0.0, scale=Scale(0.5, 5)).fit(df, history=True)
    obj = [h["objective"] for h in m.info["history"]]
    assert len(obj) == 16  # the start of every epoch plus the end
    assert all(b < a for a, b in zip(obj, obj[1:], strict=False)), obj


@pytest.mark.extended  # an internal property; no README claim rests on it (make test-extended)
def test_gd_bold_driver_recovers_from_a_step_that_diverges_without_it(rank1):
    df, R = rank1
    kw = dict(rank=2, n_epochs=12, lr=8.0, reg=0.01, optimizer="gd", momentum=0.9, init_std=0.3, scale=Scale(0.5, 5))
    with pytest.raises(ValueError, match="diverged"):
        SVD(**kw).fit(df)
    m = SVD(**kw, bold_driver=True).fit(df, history=True)
    hist = m.info["history"]
    assert len(hist) == 13  # every epoch's start point plus the end point, rejected ones included
    acc = [h for h in hist if h["accepted"] and not h["retry"]]  # new points that lowered the objective
    rej = [h for h in hist if not h["accepted"]]
    assert rej and len(acc) >= 3, hist
    obj = [h["objective"] for h in acc]
    assert all(b < a for a, b in zip(obj, obj[1:], strict=False)), obj
    best = None
    for a, b in zip(hist, hist[1:], strict=False):
        # a new point that lowers the objective: kept, 5% more step; a rejected one: back to the kept point, half the step
        best = a if a["accepted"] and not a["retry"] else best
        assert b["lr"] == pytest.approx(a["lr"] * (0.5 if not a["accepted"] else 1.0 if a["retry"] else 1.05))
        if not a["accepted"] and b is not hist[-1]:
            assert b["retry"] and b["objective"] == pytest.approx(best["objective"], rel=1e-12)
    # the returned model is the best accepted point: its training error is that point's
    best = min(acc, key=lambda h: h["objective"])
    assert np.sqrt(np.mean((_dense(m, *R.shape) - R) ** 2)) == pytest.approx(best["train_rmse"], rel=1e-9)
    assert best["train_rmse"] < hist[0]["train_rmse"] / 2


def test_gd_bold_driver_grows_the_step_while_every_step_helps(rank1):
    df, _ = rank1
    est = SVD(rank=2, n_epochs=5, lr=0.05, reg=0.01, optimizer="gd", momentum=0.0, bold_driver=True, scale=Scale(0.5, 5))
    m = est.fit(df, history=True)
    hist = m.info["history"]
    assert all(h["accepted"] for h in hist)
    assert [h["lr"] for h in hist] == pytest.approx([0.05 * 1.05**e for e in range(6)])


@pytest.mark.extended
def test_exact_optimizers_do_not_depend_on_the_partitioning(spark):
    df = spark.createDataFrame(TRAIN * 1, RATINGS_SCHEMA)
    bold = SVD(rank=2, n_epochs=6, lr=3.0, optimizer="gd", bold_driver=True, seed=3)  # rejects steps: the same ones either way
    for est in (SVD(rank=2, n_epochs=4, lr=0.2, optimizer="gd", seed=3), bold, NMFMU(rank=2, n_epochs=4, seed=3)):
        a = _dense(_with(est, num_partitions=1).fit(df), 4, 5)
        b = _dense(_with(est, num_partitions=3).fit(df), 4, 5)
        np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.extended  # an internal property; no README claim rests on it (make test-extended)
def test_sgd_float32_fit_matches_float64_and_other_optimizers_refuse_it(spark):
    df = spark.createDataFrame(TRAIN * 3, RATINGS_SCHEMA)
    a = _dense(SVD(rank=2, n_epochs=5, lr=0.02, seed=3).fit(df), 4, 5)
    b = _dense(SVD(rank=2, n_epochs=5, lr=0.02, seed=3, dtype="float32").fit(df), 4, 5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - b).max() > 0  # the float32 kernel really ran
    with pytest.raises(ValueError, match="float32 with the sgd optimizer"):
        SVD(rank=2, n_epochs=1, optimizer="gd", dtype="float32").fit(df)


def _with(est, **kw):
    import dataclasses

    return dataclasses.replace(est, **kw)


def test_seed_determinism_and_seed_sensitivity(spark):
    df = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    a = _dense(SVD(rank=2, n_epochs=3, seed=1).fit(df), 4, 5)
    b = _dense(SVD(rank=2, n_epochs=3, seed=1).fit(df.repartition(3)), 4, 5)
    c = _dense(SVD(rank=2, n_epochs=3, seed=2).fit(df), 4, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_validation_history_is_recorded(spark, rank1):
    df, _ = rank1
    fit, valid = df.where("(user_idx + item_idx) % 5 != 0"), df.where("(user_idx + item_idx) % 5 = 0")
    m = SVDpp(rank=2, n_epochs=3, time_bins=4, scale=Scale(0.5, 5)).fit(fit, valid=valid, history=True)
    hist = m.info["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert all(0 < h["valid_rmse"] < 5 and 0 < h["train_rmse"] < 5 for h in hist)
    assert m.item_bins is not None and m.time["n_bins"] == 4


# -- the factor model ----------------------------------------------------------------------
def _model_tables(spark):
    uf = spark.createDataFrame([(0, 0.5, [1.0, 0.0]), (1, -0.25, [0.5, 2.0])], "user_idx int, b_u double, factors array<double>")
    itf = spark.createDataFrame(
        [(0, 0.1, [1.0, 1.0]), (1, -0.2, [0.0, 0.5]), (2, 0.0, [2.0, -1.0])], "item_idx int, b_i double, factors array<double>"
    )
    return uf, itf


def test_factor_model_predicts_by_hand_and_falls_back(spark):
    from recsys_spark.baselines import BiasBaseline

    uf, itf = _model_tables(spark)
    base = BiasBaseline(n_iter=1, scale=Scale(1, 5)).fit(spark.createDataFrame(TRAIN, RATINGS_SCHEMA))
    m = FactorModel("fm", 3.0, uf, itf, base, source="fm")
    pairs = spark.createDataFrame([(0, 0), (1, 1), (1, 2), (0, 2), (7, 0)], "user_idx int, item_idx int")
    got = {(r[0], r[1]): (r[2], r[4]) for r in m.predict(pairs).collect()}
    assert got[(0, 0)] == (pytest.approx(3.0 + 0.5 + 0.1 + 1.0), "fm")
    assert got[(1, 1)] == (pytest.approx(3.0 - 0.25 - 0.2 + 1.0), "fm")
    assert got[(1, 2)] == (pytest.approx(3.0 - 0.25 + 0.0 + (1.0 - 2.0)), "fm")
    assert got[(0, 2)] == (pytest.approx(5.0), "fm")  # 3.5 + 2.0 = 5.5, clipped
    assert got[(7, 0)][1] == "item_bias"  # unknown user: the baseline answers


def test_factor_topk_matches_brute_force(spark):
    rng = np.random.default_rng(2)
    n_u, n_i, k = 23, 41, 5
    P, Q = rng.normal(size=(n_u, 3)), rng.normal(size=(n_i, 3))
    Q[7] = Q[8]  # a tie: the smaller item wins
    bu, bi = rng.normal(size=n_u), rng.normal(size=n_i)
    bi[8] = bi[7]
    seen = [(u, i) for u in range(n_u) for i in range(n_i) if rng.random() < 0.3]
    uf = spark.createDataFrame([(u, float(bu[u]), P[u].tolist()) for u in range(n_u)], "user_idx int, b_u double, factors array<double>")
    itf = spark.createDataFrame([(i, float(bi[i]), Q[i].tolist()) for i in range(n_i)], "item_idx int, b_i double, factors array<double>")
    seen_df = spark.createDataFrame(seen, "user_idx int, item_idx int")
    users = spark.createDataFrame([(u,) for u in range(n_u)], "user_idx int")
    got = factor_topk(users, uf, itf, seen_df, k, "m", mu=1.0, user_block=5, item_block=9).collect()
    S = 1.0 + bu[:, None] + bi[None, :] + P @ Q.T
    seen_set = set(seen)
    for u in range(n_u):
        cand = sorted((i for i in range(n_i) if (u, i) not in seen_set), key=lambda i: (-S[u, i], i))[:k]
        mine = sorted((r for r in got if r["user_idx"] == u), key=lambda r: r["rank"])
        assert [r["item_idx"] for r in mine] == cand
        np.testing.assert_allclose([r["score"] for r in mine], [S[u, i] for i in cand])


@pytest.mark.extended  # an internal property; no README claim rests on it (make test-extended)
def test_als_mllib_paths_agree_with_the_factor_tables_and_never_nan(spark):
    df = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    m = ALS(rank=3, max_iter=5, reg_param=0.1, scale=Scale(0.5, 5)).fit(df)
    users = spark.createDataFrame([(0,), (1,), (2,), (3,), (9,)], "user_idx int")
    via_mllib = sorted(m.recommend_mllib(users, 3).collect())
    via_blocks = sorted(m.recommend(users, 3).collect())
    assert [(r[0], r[1], r[2]) for r in via_mllib] == [(r[0], r[1], r[2]) for r in via_blocks]
    np.testing.assert_allclose([r[3] for r in via_mllib], [r[3] for r in via_blocks], rtol=1e-5)
    pairs = spark.createDataFrame([(0, 4), (9, 0), (0, 9), (9, 9)], "user_idx int, item_idx int")
    mllib_rows = sorted(m.predict_mllib(pairs).collect())
    assert all(r["prediction"] == r["prediction"] for r in mllib_rows)
    assert [r["source"] for r in mllib_rows] == ["als", "user_bias", "item_bias", "global_mean"]
    np.testing.assert_allclose([r[2] for r in mllib_rows], [r[2] for r in sorted(m.predict(pairs).collect())], rtol=1e-5)
    assert isinstance(m, ALSFactorModel)


def test_every_factorization_model_is_registered_with_a_default_config():
    for name in ("als", "als_implicit", "nmf", "nmf_mu", "svd", "svd_gd", "svdpp", "svdpp_time", "svd_impute"):
        assert name in registry.REGISTRY
        assert registry.model_params(name), f"recsys_spark/conf/models/{name}.toml is missing or empty"


# -- the shared contract ---------------------------------------------------------------------
class _FastContract(ClassScopedContract):
    """Fits once per class (the engine's fixed costs would dominate otherwise).

    One class per code path: ``nmf`` is ``ALS(nonnegative=True)`` and ``svd_gd``
    / ``svdpp`` answer through the same :class:`FactorModel` as ``svd`` /
    ``svdpp_time``; their optimizers are tested above.
    """


class TestALSImplicit(_FastContract):
    def make(self):
        return ALS(rank=2, max_iter=3, implicit_prefs=True, alpha=2.0, scale=self.scale, name="als_implicit")


class TestSVD(_FastContract):
    def make(self):
        return SVD(rank=2, n_epochs=3, scale=self.scale)


class TestSVDppTime(_FastContract):
    def make(self):
        return SVDpp(rank=2, n_epochs=3, time_bins=3, scale=self.scale, name="svdpp_time")


class TestNMFMU(_FastContract):
    def make(self):
        return NMFMU(rank=2, n_epochs=5, scale=self.scale)


class TestSVDImpute(_FastContract):
    def make(self):
        return registry.build("svd_impute", self.scale, {"rank": 2})


def test_als_on_baseline_residuals_predicts_baseline_plus_factors(spark):
    df = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    m = ALS(rank=2, max_iter=3, residuals=True, scale=Scale(0.5, 5)).fit(df)
    assert m.mu == pytest.approx(m.base.mu)
    ub = {r[0]: r[1] for r in m.base.user_bias.collect()}
    assert {r["user_idx"]: r["b_u"] for r in m.user_factors.collect()} == pytest.approx(ub)
    with pytest.raises(ValueError, match="residuals"):
        m.recommend_mllib(df.select("user_idx"), 2)
    with pytest.raises(ValueError, match="explicit"):
        ALS(rank=2, residuals=True, implicit_prefs=True).fit(df)
    # the residuals' baseline takes the estimator's damping
    m2 = ALS(rank=2, max_iter=3, residuals=True, base_reg_user=0.5, base_reg_item=2.0, scale=Scale(0.5, 5)).fit(df)
    want = BiasBaseline(reg_user=0.5, reg_item=2.0, scale=Scale(0.5, 5)).fit(df)
    assert {r["user_idx"]: r["b_u"] for r in m2.user_factors.collect()} == pytest.approx({r[0]: r[1] for r in want.user_bias.collect()})
    assert {r["item_idx"]: r["b_i"] for r in m2.item_factors.collect()} == pytest.approx({r[0]: r[1] for r in want.item_bias.collect()})
    assert m2.base.user_bias.collect() != m.base.user_bias.collect()  # 0.5 / 2 is not the default 15 / 10


def test_als_scaled_residuals_factor_z_scores_and_fold_the_scales_back(spark):
    """The factors are MLlib's times the user's / item's damped residual scale, computed here by hand."""
    df = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    k = 2.0
    m = ALS(rank=2, max_iter=3, residuals=True, scale_residuals=True, scale_damping=k, scale=Scale(0.5, 5)).fit(df)
    bu = {r[0]: r[1] for r in m.base.user_bias.collect()}
    bi = {r[0]: r[1] for r in m.base.item_bias.collect()}
    rows = [(u, i, r - m.base.mu - bu[u] - bi[i]) for u, i, r, *_ in TRAIN]
    g = np.mean([e * e for *_, e in rows])

    def want(pos: int) -> dict[int, float]:
        keys = {row[pos] for row in rows}
        return {
            key: np.sqrt((sum(e * e for *kk, e in rows if kk[pos] == key) + k * g) / (sum(1 for row in rows if row[pos] == key) + k) / g)
            for key in keys
        }

    su, si = want(0), want(1)
    assert min(su.values()) != pytest.approx(max(su.values()))  # the scales differ, so the check below means something
    raw_u = {r["id"]: np.array(r["features"]) for r in m.mllib.userFactors.collect()}
    raw_i = {r["id"]: np.array(r["features"]) for r in m.mllib.itemFactors.collect()}
    for r in m.user_factors.collect():
        assert np.array(r["factors"]) == pytest.approx(su[r["user_idx"]] * raw_u[r["user_idx"]], rel=1e-5, abs=1e-6)
    for r in m.item_factors.collect():
        assert np.array(r["factors"]) == pytest.approx(si[r["item_idx"]] * raw_i[r["item_idx"]], rel=1e-5, abs=1e-6)
    # predictions put MLlib's z-score back on the rating scale: mu + b_u + b_i + s_u s_i p.q (clipped)
    got = {(r["user_idx"], r["item_idx"]): r["prediction"] for r in m.predict(df.select("user_idx", "item_idx")).collect()}
    for u, i, _ in rows:
        want_p = np.clip(m.base.mu + bu[u] + bi[i] + su[u] * si[i] * float(raw_u[u] @ raw_i[i]), 0.5, 5)
        assert got[(u, i)] == pytest.approx(want_p, abs=1e-5)
    with pytest.raises(ValueError, match="residuals=True"):
        ALS(rank=2, scale_residuals=True).fit(df)
    with pytest.raises(ValueError, match="scale_damping"):
        ALS(rank=2, residuals=True, scale_residuals=True, scale_damping=0.0).fit(df)


def test_als_backfit_refits_the_biases_on_what_the_factors_leave(spark):
    """Round 1's biases are the baseline fitted on r - p.q of round 0's factors (the model without backfitting, same seed)."""
    df = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    kw = {
        "rank": 2,
        "max_iter": 3,
        "residuals": True,
        "scale_residuals": True,
        "base_reg_user": 2.0,
        "base_reg_item": 1.0,
        "scale": Scale(0.5, 5),
    }
    m0 = ALS(**kw).fit(df)
    m1 = ALS(**kw, backfit_rounds=1).fit(df)
    p0 = {r["user_idx"]: np.array(r["factors"]) for r in m0.user_factors.collect()}
    q0 = {r["item_idx"]: np.array(r["factors"]) for r in m0.item_factors.collect()}
    rest = [(u, i, float(r - p0[u] @ q0[i]), t) for u, i, r, t in TRAIN]
    want = BiasBaseline(reg_user=2.0, reg_item=1.0, scale=Scale(0.5, 5)).fit(spark.createDataFrame(rest, RATINGS_SCHEMA))
    assert m1.mu == pytest.approx(want.mu) and m1.mu != pytest.approx(m0.mu)  # the mean of r - p.q, not of r
    wu = {r[0]: r[1] for r in want.user_bias.collect()}
    assert {r["user_idx"]: r["b_u"] for r in m1.user_factors.collect()} == pytest.approx(wu)
    assert {r["item_idx"]: r["b_i"] for r in m1.item_factors.collect()} == pytest.approx({r[0]: r[1] for r in want.item_bias.collect()})
    assert {r["user_idx"]: r["b_u"] for r in m0.user_factors.collect()} != pytest.approx(wu)
    # the fallback for unknown users and items stays the standalone baseline on r
    assert m1.base.mu == pytest.approx(m0.base.mu)
    assert dict(m1.base.user_bias.collect()) == pytest.approx(dict(m0.base.user_bias.collect()))
    assert m1.info["backfit_rounds"] == 1
    # predictions combine the refitted biases with round 1's factors
    p1 = {r["user_idx"]: (r["b_u"], np.array(r["factors"])) for r in m1.user_factors.collect()}
    q1 = {r["item_idx"]: (r["b_i"], np.array(r["factors"])) for r in m1.item_factors.collect()}
    got = {(r["user_idx"], r["item_idx"]): r["prediction"] for r in m1.predict(df.select("user_idx", "item_idx")).collect()}
    for u, i, *_ in TRAIN:
        assert got[(u, i)] == pytest.approx(np.clip(m1.mu + p1[u][0] + q1[i][0] + float(p1[u][1] @ q1[i][1]), 0.5, 5), abs=1e-6)
    with pytest.raises(ValueError, match="backfit_rounds"):
        ALS(rank=2, backfit_rounds=1).fit(df)
    with pytest.raises(ValueError, match="backfit_rounds"):
        ALS(rank=2, residuals=True, backfit_rounds=-1).fit(df)


class TestALSResiduals(_FastContract):
    def make(self):
        return ALS(rank=2, max_iter=3, residuals=True, scale=self.scale, name="als")


class TestALSBackfit(_FastContract):
    """The ``als`` default's path (scaled residuals, backfitted); its first round is the scaled-residual fit."""

    def make(self):
        return ALS(rank=2, max_iter=3, residuals=True, scale_residuals=True, backfit_rounds=1, scale=self.scale, name="als")


def test_convergence_curve_keeps_the_iterate_where_the_bold_driver_rejected_a_point():
    from recsys_spark.factorization.convergence import _iterates

    hist = [
        {"epoch": 0, "train_rmse": 1.0, "valid_rmse": 1.1, "accepted": 1.0},
        {"epoch": 1, "train_rmse": 0.8, "valid_rmse": 0.9, "accepted": 1.0},
        {"epoch": 2, "train_rmse": 9.0, "valid_rmse": 9.5, "accepted": 0.0},  # rejected: back to epoch 1's point
        {"epoch": 3, "train_rmse": 0.8, "valid_rmse": 0.9, "accepted": 1.0, "retry": 1.0},
        {"epoch": 4, "train_rmse": 0.7, "valid_rmse": 0.85, "accepted": 1.0},
    ]
    assert [(r["train_rmse"], r["valid_rmse"]) for r in _iterates(hist)] == [(1.0, 1.1), (0.8, 0.9), (0.8, 0.9), (0.8, 0.9), (0.7, 0.85)]
    assert [r["epoch"] for r in _iterates(hist)] == [0, 1, 2, 3, 4]
    # SGD's history has no accepted flag: every point is the iterate
    assert _iterates([{"epoch": 0, "train_rmse": 2.0, "valid_rmse": 2.0}])[0]["train_rmse"] == 2.0
