"""Ensembles on hand-made level-1 tables with known answers, and the blend stage's guarantees."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from recsys_spark import blend as bl
from recsys_spark import stages
from recsys_spark.pipeline import run_pipeline

SMALL = (
    "generate.n_users=80", "generate.n_items=90", "generate.n_ratings=2500",
    "generate.min_ratings_per_user=8", "generate.rank=3", "split.valid_ratio=0.2", "tracking.enabled=false",
)  # fmt: skip


def _frame(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    f = pd.DataFrame({
        "user_idx": rng.integers(0, 400, n), "item_idx": rng.integers(0, 300, n),
        "p_a": rng.normal(3.5, 1.0, n), "p_b": rng.normal(3.5, 1.0, n), "p_c": rng.normal(3.5, 1.0, n),
        "log_n_user": rng.uniform(1, 6, n), "log_n_item": rng.uniform(0, 5, n), "user_var": rng.uniform(0, 2, n),
        "user_days": rng.uniform(0, 900, n), "item_days": rng.uniform(0, 3000, n),
    })  # fmt: skip
    for m in "abc":  # each member's source: its own, or (one row in ten) the bias fallback
        f[f"s_{m}"] = np.where(rng.random(n) < 0.1, "bias", m)
    return f, rng


def test_nnls_recovers_a_planted_mix_and_ignores_a_useless_member():
    f, rng = _frame()
    f["rating"] = 0.2 + 0.7 * f.p_a + 0.3 * f.p_b + rng.normal(0, 0.05, len(f))
    b = bl.fit_rating_blend("nnls", f, ["a", "b", "c"])
    assert np.allclose(b.weights, [0.7, 0.3, 0.0], atol=0.01)
    assert abs(b.intercept - 0.2) < 0.1
    # a negatively useful member gets weight 0 under nnls, a negative weight under ridge
    f["rating"] = 1.0 + 0.8 * f.p_a - 0.3 * f.p_c + rng.normal(0, 0.05, len(f))
    assert bl.fit_rating_blend("nnls", f, ["a", "c"]).weights[1] == 0.0
    assert bl.fit_rating_blend("ridge", f, ["a", "c"]).weights == pytest.approx([0.8, -0.3], abs=0.01)


def test_fwls_weights_follow_the_context_and_beat_fixed_weights():
    f, rng = _frame()
    share = (f.log_n_user - 1) / 5  # heavy users trust a, light users trust b
    f["rating"] = share * f.p_a + (1 - share) * f.p_b + rng.normal(0, 0.05, len(f))
    fw = bl.fit_rating_blend("fwls", f, ["a", "b"])
    heavy, light = f[f.log_n_user > 5.5], f[f.log_n_user < 1.5]
    assert np.sqrt(np.mean((fw.predict_np(f) - f.rating) ** 2)) < 0.08
    assert bl.cv_rmse("fwls", f, ["a", "b"]) < 0.5 * bl.cv_rmse("nnls", f, ["a", "b"])
    # the learned weight of a, as a function of activity, rises from light to heavy users
    z = (np.array(f[list(bl.CONTEXT)].mean()) - fw.ctx_mean) / fw.ctx_sd
    wa = lambda act: fw.fw[0][0] + fw.fw[0][1] * (act - fw.ctx_mean[0]) / fw.ctx_sd[0] + np.dot(fw.fw[0][2:], z[1:])  # noqa: E731
    assert wa(heavy.log_n_user.mean()) > 0.8 and wa(light.log_n_user.mean()) < 0.2


def test_segment_weights_differ_by_activity():
    f, rng = _frame()
    heavy = f.log_n_user > np.quantile(f.log_n_user, 0.75)
    f["rating"] = np.where(heavy, f.p_a, f.p_b) + rng.normal(0, 0.05, len(f))
    s = bl.fit_rating_blend("segment", f, ["a", "b"])
    assert len(s.seg_weights) == 4
    assert s.seg_weights[-1][1] > 0.9 and s.seg_weights[-1][2] < 0.1  # top quartile: a
    assert s.seg_weights[0][1] < 0.1 and s.seg_weights[0][2] > 0.9  # bottom quartile: b


def test_switch_routes_each_row_as_declared_and_skips_a_member_that_fell_back(spark):
    f, rng = _frame(n=6000, seed=5)
    f.loc[:499, "log_n_item"] = 0.0  # 500 rows of cold items
    light, heavy = f.log_n_user < np.quantile(f.log_n_user, 0.25), f.log_n_user >= np.quantile(f.log_n_user, 0.75)
    noise = rng.normal(0, 0.05, len(f))
    truth = np.select([f.log_n_item <= 0, light, heavy], [f.p_c, f.p_a, f.p_b], 0.5 * (f.p_a + f.p_b)) + noise
    f["rating"] = truth
    sw = bl.fit_rating_blend("switch", f, ["a", "b", "c"])
    first = [sw.members[chain[0]] for chain in sw.chains]
    assert first[:3] == ["c", "a", "b"] and sw.primary == ["a", "b", "c"]  # cold item, light user, heavy user
    pred, route, who = sw.switch_np(f)
    cold = (f.log_n_item <= 0).to_numpy()
    assert (route[cold] == 0).all() and (route[~cold & light.to_numpy()] == 1).all()
    # a light user's row where a fell back is answered by the next member of the chain, never by a's fallback value
    fell = np.flatnonzero(~cold & light.to_numpy() & (f.s_a == "bias").to_numpy())
    assert len(fell) > 10
    for row in fell:
        m = sw.members[who[row]]
        assert m != "a" and pred[row] == f[f"p_{m}"].iloc[row]
    # Spark gives the same numbers and says which member answered and why
    got = spark.createDataFrame(f).select(sw.predict_col().alias("x"), sw.source_col().alias("src")).toPandas()
    assert np.allclose(got.x.to_numpy(), pred, atol=1e-9)
    cold_native = np.flatnonzero(cold & (f.s_c == "c").to_numpy())[0]
    assert got.src[cold_native] == "switch:c (cold item)"
    row = fell[0]
    assert got.src[row].startswith(f"switch:{sw.members[who[row]]} (light user; a fell back")
    # the switch beats every single member here, by cross-validation (its errors: the "other" route, where
    # the truth mixes a and b, and the rows whose first member fell back)
    assert bl.cv_rmse("switch", f, ["a", "b", "c"]) < 0.7 * min(bl.single_rmse(f, m) for m in "abc")


def test_a_member_that_missed_rows_is_counted_and_answered_by_a_complete_one(spark):
    rows = [(1, 1, 4.0, "knn", 3.5, "bias"), (1, 2, None, None, 3.0, "bias"), (2, 1, None, None, 2.5, "bias")]
    t = spark.createDataFrame(rows, "user_idx int, item_idx int, p_knn double, s_knn string, p_bias double, s_bias string")
    filled, report = bl.fill_missing(t, ["knn", "bias"], "test", 3.3)
    assert report == {"missing": {"knn": 2}, "filled_by": "bias"}
    got = {(r.user_idx, r.item_idx): (r.p_knn, r.s_knn) for r in filled.collect()}
    assert got == {(1, 1): (4.0, "knn"), (1, 2): (3.0, "missing->bias"), (2, 1): (2.5, "missing->bias")}
    # nobody complete: the training mean answers
    both = t.withColumn("p_bias", F.when(F.col("item_idx") == 2, None).otherwise(F.col("p_bias")))
    filled, report = bl.fill_missing(both, ["knn", "bias"], "test", 3.3)
    assert report["filled_by"] == "the training mean" and filled.where("p_knn is null or p_bias is null").count() == 0
    assert bl.fill_missing(t, ["bias"], "test", 3.3)[1] == {"missing": {}, "filled_by": None}


def test_mean_and_median():
    f = pd.DataFrame({"p_a": [1.0, 2.0], "p_b": [3.0, 2.5], "p_c": [5.0, 9.0]})
    assert bl.RatingBlend("mean", ["a", "b", "c"]).predict_np(f).tolist() == [3.0, 4.5]
    assert bl.RatingBlend("median", ["a", "b", "c"]).predict_np(f).tolist() == [3.0, 2.5]
    assert bl.RatingBlend("median", ["a", "b"]).predict_np(f).tolist() == [2.0, 2.25]


@pytest.mark.parametrize("method", bl.RATING_METHODS)
def test_spark_application_equals_the_fitted_blend(spark, method):
    f, rng = _frame(n=1200, seed=3)
    share = (f.log_n_user - 1) / 5
    f["rating"] = 0.3 + share * f.p_a + (1 - share) * 0.5 * (f.p_b + f.p_c) + rng.normal(0, 0.1, len(f))
    b = bl.fit_rating_blend(method, f, ["a", "b", "c"])
    expected = b.predict_np(f)
    got = spark.createDataFrame(f).select(b.predict_col().alias("x")).toPandas()["x"].to_numpy()
    assert np.allclose(got, expected, atol=1e-9)


def test_rrf_and_borda_fusion_on_hand_made_lists(spark):
    a = spark.createDataFrame([(1, 10, 1), (1, 11, 2), (1, 12, 3)], "user_idx int, item_idx int, rank int")
    b = spark.createDataFrame([(1, 12, 1), (1, 13, 2), (1, 10, 3)], "user_idx int, item_idx int, rank int")
    rrf = bl.fuse({"a": a, "b": b}, "rrf", 3).orderBy("rank").collect()
    # 10: 1/61 + 1/63; 12: 1/63 + 1/61 (tie, item index first); 11: 1/62; 13: 1/62
    assert [r.item_idx for r in rrf] == [10, 12, 11]
    assert rrf[0].score == pytest.approx(1 / 61 + 1 / 63)
    assert rrf[0].contributors == ["a", "b"] and rrf[1].contributors == ["b", "a"] and rrf[2].contributors == ["a"]
    borda = bl.fuse({"a": a, "b": b}, "borda", 3, weights={"a": 1.0, "b": 3.0}).orderBy("rank").collect()
    # 12: 1*1 + 3*3 = 10; 13: 3*2 = 6; 10: 1*3 + 3*1 = 6; 11: 2 -> 12, then 10 and 13 tie (item index)
    assert [(r.item_idx, r.score) for r in borda] == [(12, 10.0), (10, 6.0), (13, 6.0)]


def test_greedy_selection_adds_a_member_only_when_it_helps():
    # user 1 likes items a finds, user 2 items b finds; c's lists are noise
    lists = {
        "a": pd.DataFrame({"user_idx": [1, 1, 2, 2], "item_idx": [1, 2, 8, 9], "rank": [1, 2, 1, 2]}),
        "b": pd.DataFrame({"user_idx": [1, 1, 2, 2], "item_idx": [8, 9, 5, 6], "rank": [1, 2, 1, 2]}),
        "c": pd.DataFrame({"user_idx": [1, 1, 2, 2], "item_idx": [30, 31, 32, 33], "rank": [1, 2, 1, 2]}),
    }
    relevant = {1: {1, 2}, 2: {5, 6}}
    sel = bl.select_fusion(lists, relevant, k=2)
    assert sel["singles"]["c"] == 0.0
    assert sel["singles"]["a"] == sel["singles"]["b"] == pytest.approx(0.5)
    # fused, each user's top 2 mixes one hit of each: better than either alone, and c is never added
    assert sorted(sel["methods"]["rrf"]["members"]) == ["a", "b"]
    assert sel["methods"]["rrf"]["ndcg"] > 0.5


MODELS = 'models.names=["item_mean", "bias", "item_knn", "popularity"]'


@pytest.fixture(scope="module")
def piped(spark, tmp_path_factory):
    """The pipeline once, with a validation part, for the stage tests; returns (config factory, results)."""
    from recsys_spark.config import load_config

    out = tmp_path_factory.mktemp("blend") / "output"

    def make(*overrides):
        return load_config(None, [f'paths.output="{out}"', *SMALL, "publish.enabled=false", *overrides])

    return make, run_pipeline(spark, make(MODELS))


def test_blend_stage_learns_only_from_validation_labels(spark, piped, monkeypatch):
    make, first = piped
    fitted = first["blend"]["counts"]
    assert fitted["ratings"]["fit_rows"] > 0 and fitted["ratings"]["cv_rmse"]
    assert set(fitted["topn"]["singles"]) == {"item_mean", "bias", "item_knn", "popularity"}
    # scramble the test labels the blend can read: what it learns must not move

    real = stages.layout.read_split

    def scrambled(spark_, cfg_, part, fold=None):
        df = real(spark_, cfg_, part, fold)
        return df.withColumn("rating", F.lit(0.5) + (F.hash("user_idx", "item_idx") % 9).cast("double") / 2) if part == "test" else df

    monkeypatch.setattr(stages.layout, "read_split", scrambled)
    again = stages.run_blend(spark, make(MODELS), force=True)["counts"]
    assert again["ratings"]["cv_rmse"] == fitted["ratings"]["cv_rmse"]
    assert again["ratings"]["blend"] == fitted["ratings"]["blend"]
    assert again["topn"]["chosen"] == fitted["topn"]["chosen"]


def test_blend_output_covers_every_test_row_and_user(spark, piped):
    make, _ = piped
    cfg = make(MODELS)
    test = stages.read_split(spark, cfg, "test")
    ratings = spark.read.parquet(cfg.stage_path("blend", "test", "ratings"))
    assert ratings.count() == test.count()
    assert ratings.where("prediction is null or isnan(prediction)").count() == 0
    topn = spark.read.parquet(cfg.stage_path("blend", "test", "topn"))
    assert topn.select("user_idx").distinct().count() == test.select("user_idx").distinct().count()
    assert topn.groupBy("user_idx", "rank").count().where("count > 1").count() == 0  # each rank once per user
    assert topn.where("size(contributors) = 0").count() == 0
    seen = stages.read_split(spark, cfg, "train").unionByName(stages.read_split(spark, cfg, "valid"))
    assert topn.join(seen, ["user_idx", "item_idx"]).count() == 0  # never a rated item
    level1 = spark.read.parquet(cfg.stage_path("blend", "level1", "valid"))
    assert {"p_bias", "s_bias", *bl.CONTEXT} <= set(level1.columns)
    assert level1.count() == stages.read_split(spark, cfg, "valid").count()
    results = json.loads(Path(cfg.stage_path("evaluate", "results.json")).read_text())
    assert "blend" in results["models"] and results["best_single"]["model"] in {"item_mean", "bias", "item_knn", "popularity"}


def test_blend_names_a_member_without_predictions_or_made_on_another_split(spark, piped):
    make, _ = piped
    with pytest.raises(bl.BlendError, match="'user_mean' has no predictions"):
        stages.run_blend(spark, make('models.names=["item_mean", "bias", "user_mean"]'))
    reseeded = make(MODELS, "split.seed=7")
    stages.run_split(spark, reseeded)
    # the predictions were made on the first split; the reseeded one is another folder
    with pytest.raises(bl.BlendError, match="predictions of 'item_mean' were made on another split"):
        stages.run_blend(spark, reseeded)


def test_final_table_covers_every_user_once_per_rank_with_contributors_and_why(spark, piped):
    from recsys_spark.stages.final import read_final

    make, first = piped
    cfg = make(MODELS)
    counts = first["final"]["counts"]
    blend = first["blend"]["counts"]["topn"]["chosen"]
    ratings = stages.read_ingested(spark, cfg)
    # the production fit: the blend's chosen members, on every rating (train + valid + test)
    assert counts["fit"] == "production" and counts["members"] == blend["members"] and counts["method"] == blend["method"]
    assert counts["fit_rows"] == ratings.count() == sum(stages.read_split(spark, cfg, p).count() for p in ("train", "valid", "test"))
    table = read_final(spark, cfg)
    users = stages.read_ingested(spark, cfg, "user_map")
    assert table.select("user_idx").distinct().count() == users.count() == counts["users_written"]
    k = cfg.models.k
    per_user = table.groupBy("user_idx").agg(F.count("*").alias("n"), F.countDistinct("rank").alias("r"), F.max("rank").alias("m"))
    assert per_user.where(f"n != {k} or r != {k} or m != {k}").count() == 0  # ranks 1..k, each once
    assert table.join(ratings, ["user_idx", "item_idx"]).count() == 0  # never an item the user rated
    assert table.where("size(contributors) = 0 or explanation is null or explanation = ''").count() == 0
    assert table.where("title is null or user_id is null or item_id is null").count() == 0
    # most rows name an item the user rated as the reason, and that item is one the user did rate
    assert counts["rows_with_neighbour_evidence"] > 0.5 * counts["rows"]


def test_final_cold_start_users_the_lookup_and_the_csv_export(spark, piped, monkeypatch, tmp_path):
    from recsys_spark.blend.final import contributors_text
    from recsys_spark.cli import export_csv
    from recsys_spark.stages import final as stage

    make, _ = piped
    cfg = make(MODELS)
    real = stages.layout.read_ingested

    def with_a_new_user(spark_, cfg_, table="ratings"):
        df = real(spark_, cfg_, table)
        return df.unionByName(spark_.createDataFrame([("brand-new", 10_000)], df.schema)) if table == "user_map" else df

    monkeypatch.setattr(stages.layout, "read_ingested", with_a_new_user)
    counts = stage.run_final(spark, cfg, force=True)["counts"]
    assert counts["cold_start_users"] == 1 and counts["users_written"] == counts["users"]
    new = stage.user_rows(spark, cfg, "brand-new").orderBy("rank").collect()
    assert [r["rank"] for r in new] == list(range(1, cfg.models.k + 1)) and {r["source"] for r in new} == {"cold_start"}
    assert new[0]["explanation"].startswith("You have no ratings yet")
    assert len(stage.user_rows(spark, cfg, "1", k=3).collect()) == 3
    with pytest.raises(LookupError, match="user 'nobody' is not in"):
        stage.user_rows(spark, cfg, "nobody")
    out = tmp_path / "all.csv"
    assert export_csv(spark, stage.read_final(spark, cfg), str(out), contributors_text) == counts["rows"]
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["user_idx", "user_id", "rank", "item_idx", "item_id", "title", "score", "contributors", "explanation", "source"]


def test_predict_without_a_refit_keeps_the_validation_items_off_the_test_lists(spark, piped):
    make, _ = piped
    cfg = make(MODELS, "models.refit_for_test=false")
    counts = stages.run_predict(spark, cfg, "popularity")["counts"]
    assert counts["test_fit"].startswith("train (")
    top = spark.read.parquet(cfg.stage_path("predictions", "popularity", "test", "topn"))
    valid, train = stages.read_split(spark, cfg, "valid"), stages.read_split(spark, cfg, "train")
    assert top.join(valid, ["user_idx", "item_idx"]).count() == 0 and top.join(train, ["user_idx", "item_idx"]).count() == 0
    per_user = top.groupBy("user_idx").agg(F.count("*").alias("n"), F.max("rank").alias("m"))
    assert per_user.where(f"n != {cfg.models.k} or m != {cfg.models.k}").count() == 0
