"""Baselines: shared contract, values checked against hand/numpy computations."""

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasBaseline, GlobalMean, ItemMean, Popularity, UserMean
from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS_SCHEMA
from tests.contract.model_contract import TRAIN, ModelContract


class TestGlobalMean(ModelContract):
    def make(self):
        return GlobalMean(scale=self.scale)


class TestUserMean(ModelContract):
    def make(self):
        return UserMean(scale=self.scale)


class TestItemMean(ModelContract):
    def make(self):
        return ItemMean(scale=self.scale)


class TestPopularity(ModelContract):
    def make(self):
        return Popularity(scale=self.scale)


class TestBias(ModelContract):
    def make(self):
        return BiasBaseline(n_iter=3, scale=self.scale)


def _pred(model, spark, pairs):
    df = spark.createDataFrame(pairs, "user_idx int, item_idx int")
    return {(r["user_idx"], r["item_idx"]): (r["prediction"], r["source"]) for r in model.predict(df).collect()}


@pytest.fixture
def train(spark):
    return spark.createDataFrame(TRAIN, RATINGS_SCHEMA)


def test_means_by_hand(spark, train):
    mu = sum(r[2] for r in TRAIN) / len(TRAIN)  # 38/11
    p = _pred(GlobalMean().fit(train), spark, [(0, 0)])
    assert p[(0, 0)] == (pytest.approx(mu), "global_mean")
    p = _pred(UserMean().fit(train), spark, [(0, 4), (9, 0)])
    assert p[(0, 4)] == (pytest.approx(4.0), "user_mean")  # user 0: 5, 3, 4
    assert p[(9, 0)] == (pytest.approx(mu), "global_mean")
    p = _pred(ItemMean().fit(train), spark, [(1, 4), (0, 9)])
    assert p[(1, 4)] == (pytest.approx(3.0), "item_mean")  # item 4: 4, 2
    assert p[(0, 9)] == (pytest.approx(mu), "global_mean")


def test_clipping_to_scale(spark):
    train = spark.createDataFrame([(0, 0, 5.0, 1), (1, 0, 5.0, 1), (0, 1, 1.0, 1)], RATINGS_SCHEMA)
    model = UserMean(scale=Scale(1.0, 4.0)).fit(train)
    assert _pred(model, spark, [(1, 1)])[(1, 1)][0] == 4.0


def test_popularity_count_and_damped_mean(spark, train):
    top = Popularity(kind="count").fit(train).recommend(spark.createDataFrame([(1,)], "user_idx int"), 2)
    # counts: item0 3, item1 2, item2 2, item3 2, item4 2; user 1 rated 0 and 3 -> 1, 2 (tie by index)
    assert [r["item_idx"] for r in top.orderBy("rank").collect()] == [1, 2]
    mu = 38 / 11
    m = Popularity(kind="mean", damping=2.0).fit(train)
    expected = (5 + 4 + 5 + 2 * mu) / (3 + 2)  # item 0
    assert _pred(m, spark, [(1, 0)])[(1, 0)] == (pytest.approx(expected), "popularity")
    with pytest.raises(ValueError, match="kind"):
        Popularity(kind="loud").fit(train)


def numpy_bias(rows, reg_u, reg_i, n_iter):
    """Independent reference: the alternating updates written with numpy loops."""
    u = np.array([r[0] for r in rows])
    i = np.array([r[1] for r in rows])
    r = np.array([r[2] for r in rows])
    mu = r.mean()
    bu = np.zeros(u.max() + 1)
    bi = np.zeros(i.max() + 1)
    for _ in range(n_iter):
        for uu in np.unique(u):
            m = u == uu
            bu[uu] = (r[m] - mu - bi[i[m]]).sum() / (reg_u + m.sum())
        for ii in np.unique(i):
            m = i == ii
            bi[ii] = (r[m] - mu - bu[u[m]]).sum() / (reg_i + m.sum())
    return mu, bu, bi


def test_bias_baseline_matches_numpy_reference(spark, train):
    mu, bu, bi = numpy_bias(TRAIN, 1.5, 2.5, 4)
    model = BiasBaseline(reg_user=1.5, reg_item=2.5, n_iter=4, scale=Scale(-100, 100)).fit(train)
    pairs = [(u, i) for u in range(4) for i in range(5)] + [(7, 1), (1, 7)]
    got = _pred(model, spark, pairs)
    for u in range(4):
        for i in range(5):
            assert got[(u, i)] == (pytest.approx(mu + bu[u] + bi[i]), "bias")
    assert got[(7, 1)] == (pytest.approx(mu + bi[1]), "item_bias")
    assert got[(1, 7)] == (pytest.approx(mu + bu[1]), "user_bias")
    top = model.recommend(spark.createDataFrame([(1,)], "user_idx int"), 1).first()
    unseen = [i for i in range(5) if i not in (0, 3)]
    assert top["item_idx"] == max(unseen, key=lambda i: bi[i])


def test_rejects_bad_params(train):
    with pytest.raises(ValueError):
        BiasBaseline(n_iter=0).fit(train)
    with pytest.raises(ValueError, match="missing column"):
        BiasBaseline().fit(train.drop("rating"))


def test_bias_does_not_grow_plan(spark, train):
    model = BiasBaseline(n_iter=8).fit(train)
    # lineage is cut every sweep: the bias tables' plans stay shallow
    assert len(model.item_bias._jdf.queryExecution().analyzed().toString()) < 2000
    assert model.user_bias.where(F.col("b_u").isNull()).count() == 0
