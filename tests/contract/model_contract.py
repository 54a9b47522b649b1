"""Shared contract tests: every recommender's test class plugs its estimator in.

    class TestBias(ModelContract):
        def make(self):
            return BiasBaseline(n_iter=2)
"""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from recsys_spark.recommender import Scale
from recsys_spark.schemas import PREDICTIONS_SCHEMA, RATINGS_SCHEMA, TOPN_SCHEMA

TRAIN = [
    (0, 0, 5.0, 1), (0, 1, 3.0, 2), (0, 2, 4.0, 3),
    (1, 0, 4.0, 1), (1, 3, 2.0, 2),
    (2, 1, 1.0, 1), (2, 2, 5.0, 2), (2, 3, 3.0, 3), (2, 4, 4.0, 4),
    (3, 4, 2.0, 1), (3, 0, 5.0, 2),
]  # fmt: skip


def _names(schema):
    return [f.name for f in schema.fields]


class ModelContract:
    """Subclasses define ``make()`` returning an unfitted estimator (scale 0.5-5)."""

    scale = Scale(0.5, 5.0)
    # baselines score every training item, so a list is as long as k or the unseen items
    # allow; neighbourhood models only score items reachable through neighbours
    complete_lists = True

    def side(self):
        """Side tables for a model that reads them (``uses_side``); None for the rest."""
        return None

    def fit(self, train):
        return self.make().fit_with(train, self.side())

    def make(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def train(self, spark):
        return spark.createDataFrame(TRAIN, RATINGS_SCHEMA)

    @pytest.fixture
    def model(self, train):
        return self.fit(train)

    def test_predicts_every_pair_in_contract_shape(self, spark, model):
        pairs = spark.createDataFrame([(0, 3), (1, 1), (3, 2)], "user_idx int, item_idx int")
        out = model.predict(pairs)
        assert out.columns == _names(PREDICTIONS_SCHEMA)
        rows = out.collect()
        assert sorted((r["user_idx"], r["item_idx"]) for r in rows) == [(0, 3), (1, 1), (3, 2)]
        for r in rows:
            assert self.scale.lo <= r["prediction"] <= self.scale.hi
            assert r["model"] == model.name and r["source"]

    def test_unknown_user_and_item_fall_back_and_say_so(self, spark, model):
        pairs = spark.createDataFrame([(99, 0), (0, 99), (98, 98)], "user_idx int, item_idx int")
        rows = {(r["user_idx"], r["item_idx"]): r for r in model.predict(pairs).collect()}
        assert len(rows) == 3
        for r in rows.values():
            assert r["prediction"] == r["prediction"]  # not NaN
            assert self.scale.lo <= r["prediction"] <= self.scale.hi
        assert rows[(98, 98)]["source"] == "global_mean"

    def test_empty_inputs(self, spark, model):
        empty_pairs = spark.createDataFrame([], "user_idx int, item_idx int")
        assert model.predict(empty_pairs).count() == 0
        assert model.recommend(empty_pairs.select("user_idx"), 3).count() == 0
        with pytest.raises(ValueError):
            self.fit(spark.createDataFrame([], RATINGS_SCHEMA))

    def test_recommend_excludes_seen_and_ranks(self, spark, model, train):
        users = spark.createDataFrame([(0,), (2,), (3,)], "user_idx int")
        top = model.recommend(users, k=2)
        assert top.columns == _names(TOPN_SCHEMA)
        seen = {(r["user_idx"], r["item_idx"]) for r in train.collect()}
        rows = top.collect()
        for r in rows:
            assert (r["user_idx"], r["item_idx"]) not in seen
        by_user = {}
        for r in rows:
            by_user.setdefault(r["user_idx"], []).append(r)
        if self.complete_lists:
            assert sorted(len(v) for v in by_user.values()) == [1, 2, 2]  # user 2 has one unseen item
        else:
            assert all(len(v) <= (1 if u == 2 else 2) for u, v in by_user.items())
        for v in by_user.values():
            v.sort(key=lambda r: r["rank"])
            assert [r["rank"] for r in v] == list(range(1, len(v) + 1))
            assert all(a["score"] >= b["score"] for a, b in zip(v, v[1:], strict=False))

    def test_save_load_round_trip(self, spark, model, tmp_path):
        path = str(tmp_path / "m")
        model.save(path)
        loaded = type(model).load(path)
        pairs = spark.createDataFrame([(u, i) for u in range(5) for i in range(6)], "user_idx int, item_idx int")
        a = sorted(model.predict(pairs).collect())
        b = sorted(loaded.predict(pairs).collect())
        assert a == b
        users = pairs.select("user_idx").distinct()
        assert sorted(model.recommend(users, 3).collect()) == sorted(loaded.recommend(users, 3).collect())

    def test_deterministic(self, spark, model, train):
        pairs = spark.createDataFrame([(u, i) for u in range(4) for i in range(5)], "user_idx int, item_idx int")
        a = sorted(model.predict(pairs).collect())  # the fixture's fit on ``train``: one fit less per model
        b = sorted(self.fit(train.repartition(3)).predict(pairs).orderBy(F.col("user_idx")).collect())
        assert [(r[0], r[1], round(r[2], 9)) for r in a] == [(r[0], r[1], round(r[2], 9)) for r in b]


class ClassScopedContract(ModelContract):
    """The contract with one fit per test class: for models whose fit is many Spark jobs."""

    @pytest.fixture(scope="class")
    def train(self, spark):
        return spark.createDataFrame(TRAIN, RATINGS_SCHEMA)

    @pytest.fixture(scope="class")
    def model(self, train):
        return self.fit(train)
