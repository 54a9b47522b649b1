"""The benchmark command's plumbing, and the top-N protocol on tiny generated data."""

import json
import re

import pytest

from recsys_spark import registry
from recsys_spark.benchmark import (
    dataset_overrides,
    parse_folds,
    run_benchmark,
    summary_table,
    write_result,
)
from recsys_spark.recommender import Scale

SMALL = [
    "generate.n_users=60", "generate.n_items=80", "generate.n_ratings=2400",
    "generate.min_ratings_per_user=8", "generate.rank=3",
]  # fmt: skip


def test_parse_folds():
    assert parse_folds("1-5") == [1, 2, 3, 4, 5]
    assert parse_folds("1,3") == [1, 3]
    with pytest.raises(ValueError, match="folds"):
        parse_folds("0-6")


def test_dataset_names():
    assert dataset_overrides("ml-100k") == ["dataset.kind=ml-100k"]
    assert dataset_overrides("ml-latest-small") == ["dataset.kind=ml-latest", "dataset.name=ml-latest-small"]
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_overrides("netflix")


def test_registry_builds_tuned_defaults_and_rejects_typos():
    bias = registry.build("bias", Scale(1, 5))
    assert (bias.reg_user, bias.reg_item, bias.n_iter) == (15.0, 10.0, 10)
    assert registry.build("popularity_mean", Scale()).kind == "mean"
    with pytest.raises(ValueError, match="unknown model 'biass'"):
        registry.build("biass", Scale())
    with pytest.raises(ValueError, match="bad parameter"):
        registry.build("bias", Scale(), {"reg_usr": 1})


def test_topn_protocol_on_generated_data(spark, tmp_path):
    out = tmp_path / "out"
    res = run_benchmark(
        spark, "topn", "generated", ["popularity", "global_mean", "blend:rrf"], k=5,
        overrides=[f'paths.output="{out}"', *SMALL],
    )  # fmt: skip
    fused = res["models"]["blend:rrf"]
    assert fused["members"] == ["popularity", "global_mean"] and fused["best_single"] == "popularity"
    assert fused["paired_ndcg@5_vs_popularity"]["users"] == res["protocol"]["test_users"]
    assert fused["paired_ndcg@5_vs_popularity"]["diff"] == pytest.approx(fused["ndcg@5"] - res["models"]["popularity"]["ndcg@5"])
    with pytest.raises(ValueError, match="blend:nnls: the topn protocol blends with one of rrf, borda"):
        run_benchmark(spark, "topn", "generated", ["popularity", "global_mean", "blend:nnls"], overrides=[f'paths.output="{out}"', *SMALL])
    assert res["protocol"]["split"] == "stratified" and res["protocol"]["seed"] == 42
    pop = res["models"]["popularity"]
    for key in ("precision@5", "recall@5", "ndcg@5", "map@5", "hr@5", "mrr@5", "coverage", "novelty", "diversity"):
        assert 0.0 <= pop[key] <= (1.0 if key != "novelty" else 50.0), key
    assert pop["users"] == res["protocol"]["test_users"]
    # popular items are popular in the test part too: popularity beats an arbitrary order
    assert pop["ndcg@5"] > res["models"]["global_mean"]["ndcg@5"]
    path = tmp_path / "r.json"
    write_result(res, str(path))
    assert json.loads(path.read_text())["models"]["popularity"]["ndcg@5"] == pop["ndcg@5"]
    assert "| popularity |" in summary_table(res)
    # the tuned defaults come from models.models_dir when the config names one
    models = tmp_path / "models"
    models.mkdir()
    (models / "global_mean.toml").write_text("[params]\nno_such_param = 1\n")
    with pytest.raises(ValueError, match=re.escape(f"bad parameter in {models / 'global_mean.toml'}")):
        run_benchmark(
            spark, "topn", "generated", ["global_mean"], k=5, overrides=[f'paths.output="{out}"', f'models.models_dir="{models}"', *SMALL]
        )


def test_rating_protocol_off_ml100k_is_one_stratified_split_and_scores_every_test_rating(spark, tmp_path):
    over = [f'paths.output="{tmp_path}"', *SMALL]
    res = run_benchmark(spark, "rating", "generated", ["bias"], overrides=over)
    assert res["protocol"]["folds"] == ["s42"] and res["protocol"]["split"] == "stratified" and res["protocol"]["seed"] == 42
    (test_dir,) = [p for p in tmp_path.glob("generated/splits/stratified-*/test")]
    assert res["models"]["bias"]["rows"] == spark.read.parquet(str(test_dir)).count()
    assert res["models"]["bias"]["predict_rows_per_s"] > 0 and res["models"]["bias"]["peak_jvm_heap_mb"] > 0
    with pytest.raises(ValueError, match="canonical"):
        run_benchmark(spark, "rating", "generated", ["bias"], folds="1", overrides=over)


def test_coldstart_pools_new_user_slices(spark, tmp_path):
    out = tmp_path / "out"
    over = [f'paths.output="{out}"', *SMALL]
    res = run_benchmark(spark, "coldstart", "generated", ["popularity", "global_mean"], k=5, overrides=over, slices=2)
    users = res["experiments"]["users"]
    per_slice = [s["counts"]["test_users"] for s in users["slices"]]
    assert len(per_slice) == 2 and all(per_slice) and users["counts"]["slices"] == 2
    assert users["models"]["popularity"]["users"] == sum(per_slice) == users["counts"]["test_users"]
    assert users["paired"]["popularity - global_mean"]["ndcg@5"]["users"] == sum(per_slice)
    assert res["protocol"]["slices"] == 2 and "per_user" not in users and "per_user" not in res["experiments"]["items"]
    path = tmp_path / "c.json"
    write_result(res, str(path))  # JSON-serialisable: the per-user frames are gone
    assert json.loads(path.read_text())["experiments"]["users"]["counts"]["slices"] == 2
    assert "| cold users | popularity |" in summary_table(res)
    with pytest.raises(ValueError, match="slices"):
        run_benchmark(spark, "coldstart", "generated", ["popularity"], overrides=over, slices=11)
