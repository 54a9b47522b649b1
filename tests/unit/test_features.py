"""Feature export: the tables' values on tiny inline data, and the export / train_torch stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark import features as fe
from recsys_spark import stages
from recsys_spark.schemas import ITEMS_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA
from tests.unit.test_stages import SMALL

RATINGS = [(0, 0, 5.0, 30), (0, 1, 3.0, 10), (0, 2, 4.0, 20), (1, 0, 4.0, 5), (1, 3, 2.0, 5), (2, 4, 1.0, None)]


@pytest.fixture(scope="module")
def ratings(spark):
    return spark.createDataFrame(RATINGS, RATINGS_SCHEMA)


def test_interactions_declare_the_schema(ratings):
    out = fe.interactions(ratings)
    assert [(f.name, f.dataType) for f in out.schema] == [(f.name, f.dataType) for f in fe.INTERACTIONS_SCHEMA]
    assert out.count() == len(RATINGS) and out.where("label != 1.0").count() == 0


def test_negatives_exclude_positives_are_seeded_and_sized(ratings):
    n_items = 50
    neg = fe.sample_negatives(ratings, n_items, ratio=3, seed=1)
    rows = {(r.user_idx, r.item_idx) for r in neg.collect()}
    pos = {(u, i) for u, i, _, _ in RATINGS}
    assert not rows & pos
    per_user = {u: sum(1 for x, _ in rows if x == u) for u in (0, 1, 2)}
    assert per_user == {0: 9, 1: 6, 2: 3}  # 3 per positive, distinct items
    assert all(0 <= i < n_items for _, i in rows)
    assert {(r.user_idx, r.item_idx) for r in fe.sample_negatives(ratings.repartition(3), n_items, 3, 1).collect()} == rows
    assert {(r.user_idx, r.item_idx) for r in fe.sample_negatives(ratings, n_items, 3, 2).collect()} != rows
    assert fe.negatives_shortfall(ratings, neg, n_items, 3) == 0


def test_negatives_cap_at_the_unrated_items(spark):
    dense = spark.createDataFrame([(0, i, 3.0, 0) for i in range(8)], RATINGS_SCHEMA)  # user 0 rated 8 of 10
    neg = fe.sample_negatives(dense, 10, ratio=4, seed=0)
    assert sorted(r.item_idx for r in neg.collect()) == [8, 9]
    assert fe.negatives_shortfall(dense, neg, 10, 4) == 0


def test_item_features_multi_hot_decade_and_terms(spark):
    items = spark.createDataFrame(
        [(0, "a", "A", ["Drama", "War"], 1995), (1, "b", "B", ["Comedy"], 1972), (2, "c", "C", [], None)], ITEMS_SCHEMA
    )
    genres = fe.genre_vocabulary(items)
    assert genres == ["Comedy", "Drama", "War"]
    vectors = spark.createDataFrame(
        [(0, [1, 4, 7], [0.2, 0.9, 0.5]), (1, [2], [1.0])], "item_idx int, indices array<int>, values array<double>"
    )
    out = {r.item_idx: r for r in fe.item_features(items, genres, vectors, top_terms=2).collect()}
    assert out[0].genres == [0.0, 1.0, 1.0] and out[1].genres == [1.0, 0.0, 0.0] and out[2].genres == [0.0, 0.0, 0.0]
    assert (out[0].decade, out[1].decade, out[2].decade) == (3, 1, 0)  # 1970s = 1, 1990s = 3, unknown = 0
    assert out[0].terms == [4, 7] and out[1].terms == [2, -1] and out[2].terms == [-1, -1]


def test_user_features_and_histories(spark, ratings):
    users = spark.createDataFrame([(0, "10", "M", 24, "writer", "1"), (1, "11", "F", 51, "artist", "2")], USERS_SCHEMA)
    table, occ = fe.user_features(users, ratings)
    assert occ == ["artist", "writer"]
    got = {r.user_idx: (r.gender, r.age_bucket, r.occupation) for r in table.collect()}
    assert got == {0: (1, 2, 1), 1: (0, 5, 0), 2: (-1, -1, -1)}
    h = {r.user_idx: r for r in fe.histories(ratings).collect()}
    assert h[0]["items"] == [1, 2, 0] and h[0]["timestamps"] == [10, 20, 30] and h[0]["ratings"] == [3.0, 4.0, 5.0]
    assert h[1]["items"] == [0, 3] and h[1]["length"] == 2  # same timestamp: by item


@pytest.mark.slow
def test_export_and_train_torch_stages(spark, cfg_factory):
    pytest.importorskip("torch")
    from recsys_spark.torch import data as td

    cfg = cfg_factory(*SMALL, "export.files=2", "export.negatives=2", "torch.model=gmf", "tracking.enabled=false")
    for stage in ("generate", "ingest", "split"):
        stages.STAGES[stage](spark, cfg)
    with pytest.raises(FileNotFoundError, match="run the export_features stage first"):
        stages.run_train_torch(spark, cfg)
    res = stages.run_export(spark, cfg)
    c = res["counts"]
    for part in ("train", "valid", "test"):
        assert c[f"interactions_{part}"] == stages.read_split(spark, cfg, part).count()
    per_user = [r["count"] for r in stages.read_split(spark, cfg, "train").groupBy("user_idx").count().collect()]
    assert c["negatives"] == sum(min(2 * n, 80 - n) for n in per_user) and c["negatives_short"] == 0
    out = cfg.stage_path("features", stages.split_name(cfg))
    meta = json.loads(open(f"{out}/metadata.json").read())
    assert meta["n_users"] == 60 and meta["n_items"] == 80 and meta["split"] == stages.split_name(cfg)
    assert meta["n_genres"] == len(meta["genres"]) > 0
    # the loader reads the export as written: every training row once, dtypes as asked
    import torch

    ds = td.ArrowDataset(f"{out}/interactions/train", {"user_idx": torch.int64, "item_idx": torch.int64, "label": torch.float32}, 64)
    rows = sum(len(b["label"]) for b in ds)
    assert rows == c["interactions_train"]
    neg = spark.read.parquet(f"{out}/negatives")
    train = spark.read.parquet(f"{out}/interactions/train")
    assert neg.join(train, ["user_idx", "item_idx"]).count() == 0
    hist = spark.read.parquet(f"{out}/histories")
    assert hist.agg(F.sum("length")).first()[0] == c["interactions_train"]
    assert stages.run_export(spark, cfg)["skipped"]

    tr = stages.run_train_torch(spark, cfg)["counts"]
    assert tr["predicted"] == tr["test_rows"] == c["interactions_test"]
    assert tr["users_with_lists"] == tr["users"]
    tout = cfg.stage_path("torch", "gmf")
    top = spark.read.parquet(f"{tout}/predictions/topn")
    assert top.columns == ["user_idx", "rank", "item_idx", "score", "model"]
    assert top.join(train, ["user_idx", "item_idx"]).count() == 0  # never a training item
    assert np.isfinite([r.score for r in top.collect()]).all()
    with pytest.raises(ValueError, match="not a registered deep model"):
        stages.run_train_torch(spark, cfg, "bias")


def test_pipeline_exports_features_when_a_deep_model_is_fitted(cfg_factory):
    from recsys_spark.pipeline import pipeline_stages

    with_deep = pipeline_stages(cfg_factory('models.names=["popularity", "gmf"]'))
    assert with_deep[:4] == ["generate", "ingest", "split", "export_features"] and "predict:gmf" in with_deep
    assert "export_features" not in pipeline_stages(cfg_factory('models.names=["popularity"]'))
